"""Test-time averaging over crops and models, on index-encoded images and fake networks."""

import math

import torch
from torch import nn

from alexnet.data.augment import normalize, ten_crop
from alexnet.evaluate import evaluate, evaluate_views, mean_image_subtraction, per_channel, views

CPU = torch.device("cpu")


def index_images(n, size=8):
    """Image i has pixel value (row * size + col) in channel 0, i in channel 1, 7 in channel 2."""
    imgs = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    imgs[:, 0] = torch.arange(size * size).view(size, size)
    imgs[:, 1] = torch.arange(n).view(n, 1, 1)
    imgs[:, 2] = 7
    return imgs


def as_float(x):
    return x.float()


class TableModel(nn.Module):
    """Logits ``table[i]`` for image i (read from channel 1), plus ``view_weight`` x the view's first pixels."""

    def __init__(self, table, view_weight=0.0):
        super().__init__()
        self.table, self.view_weight, self.calls = table, view_weight, []

    def forward(self, x):
        self.calls.append(x.clone())
        view = x[:, 0].flatten(1)[:, :self.table.shape[1]]
        return self.table[x[:, 1, 0, 0].long()] + self.view_weight * view


def test_ensemble_averages_the_softmax_of_its_models():
    # Logits are log-probabilities, so each model's softmax is its row as written.
    a = torch.tensor([[.45, .05, .40, .04, .03, .03], [.30, .20, .20, .15, .10, .05], [.10, .10, .10, .50, .10, .10]])
    b = torch.tensor([[.05, .45, .40, .04, .03, .03], [.20, .30, .20, .15, .10, .05], [.10, .10, .45, .15, .10, .10]])
    labels = torch.tensor([2, 5, 3])
    models = [TableModel(a.log()), TableModel(b.log())]
    out = evaluate_views(models, index_images(3), labels, batch_size=2, device=CPU, prepare=as_float)
    # averaged: image 0 -> (.25, .25, .40, ...) top-1 is 2, a hit; image 1: class 5 is last (.05), a miss;
    # image 2 -> class 3 .325 > class 2 .275, a hit (model b alone misses it).
    assert out["examples"] == 3
    assert math.isclose(out["val_top1_err"], 1 / 3) and math.isclose(out["val_top5_err"], 1 / 3)
    assert math.isclose(out["val_loss"], -(math.log(.40) + math.log(.05) + math.log(.325)) / 3, rel_tol=1e-5)
    alone = evaluate_views(models[0], index_images(3), labels, batch_size=2, device=CPU, prepare=as_float)
    assert math.isclose(alone["val_top1_err"], 2 / 3)


def test_ten_crops_feed_ten_views_per_image_and_average_their_softmax():
    imgs, labels = index_images(5), torch.tensor([0, 1, 2, 3, 4])
    table = torch.randn(5, 6)
    model = TableModel(table, view_weight=0.1)
    out = evaluate_views([model], imgs, labels, batch_size=2, device=CPU, crops=10, size=5, prepare=as_float)
    assert [len(x) for x in model.calls] == [20, 20, 10]
    assert torch.equal(torch.cat(model.calls), ten_crop(imgs, 5).float())
    probs = torch.stack([torch.stack([(table[i] + 0.1 * v[0].flatten()[:6]).softmax(0)
                                      for v in ten_crop(imgs[i:i + 1], 5).float()]).mean(0) for i in range(5)])
    assert math.isclose(out["val_top1_err"], 1 - (probs.argmax(1) == labels).sum().item() / 5)
    assert math.isclose(out["val_loss"], -probs[torch.arange(5), labels].log().mean().item(), rel_tol=1e-5)


def test_every_example_counted_once_with_a_short_last_batch():
    imgs, labels = index_images(7), torch.tensor([0, 0, 0, 0, 8, 8, 8])
    model = TableModel(-torch.arange(10.0).repeat(7, 1)).train()  # class 0 first, class 8 ninth
    out = evaluate_views(model, imgs, labels, batch_size=3, device=CPU, crops=2, size=6, prepare=as_float)
    seen = torch.cat(model.calls)[:, 1, 0, 0].long()
    assert out["examples"] == 7 and torch.equal(seen, torch.arange(7).repeat_interleave(2))
    assert math.isclose(out["val_top1_err"], 3 / 7) and math.isclose(out["val_top5_err"], 3 / 7)
    assert model.training  # mode restored


def test_mean_image_is_cut_like_the_views():
    imgs = index_images(4)
    mean_image = torch.rand(3, 8, 8) * 255
    for crops, size in ((1, 6), (2, 6), (10, 5), (1, None)):
        prepared = mean_image_subtraction(mean_image, crops, size)(views(imgs, crops, size))
        expected = views(imgs.float() - mean_image, crops, size)  # subtract at stored size, then cut
        torch.testing.assert_close(prepared, expected)


def test_evaluate_keeps_its_meaning():
    imgs, labels = index_images(5), torch.tensor([0, 1, 2, 3, 4])
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 6))
    x = normalize(imgs, mean, std)
    with torch.no_grad():
        plain = model(x).softmax(1)
        mirrored = (plain + model(x.flip(-1)).softmax(1)) / 2
    for flip, probs in ((False, plain), (True, mirrored)):
        out = evaluate(model, imgs, labels, batch_size=2, device=CPU, mean=mean, std=std, flip=flip)
        assert out["examples"] == 5
        assert math.isclose(out["val_top1_err"], 1 - (probs.argmax(1) == labels).sum().item() / 5)
        assert math.isclose(out["val_loss"], -probs[torch.arange(5), labels].log().mean().item(), rel_tol=1e-5)
        same = evaluate_views(model, imgs, labels, batch_size=2, device=CPU, crops=2 if flip else 1,
                              prepare=per_channel(mean, std))
        assert same == out
