"""Test-time averaging over crops and models, on index-encoded images and fake networks."""

import math

import torch
from torch import nn

from alexnet.data.augment import normalize, ten_crop, views
from alexnet.data.pipeline import Pipeline
from alexnet.use.evaluate import evaluate_views
from fixtures import index_images

CPU = torch.device("cpu")


def as_float(count=1, size=None):
    return lambda x: (views(x, count, size).float(),)


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
    out = evaluate_views(models, index_images(3), labels, batch_size=2, device=CPU, views=1, inputs=as_float())
    # averaged: image 0 -> (.25, .25, .40, ...) top-1 is 2, a hit; image 1: class 5 is last (.05), a miss;
    # image 2 -> class 3 .325 > class 2 .275, a hit (model b alone misses it).
    assert out["examples"] == 3
    assert math.isclose(out["val_top1_err"], 1 / 3) and math.isclose(out["val_top5_err"], 1 / 3)
    assert math.isclose(out["val_loss"], -(math.log(.40) + math.log(.05) + math.log(.325)) / 3, rel_tol=1e-5)
    alone = evaluate_views(models[0], index_images(3), labels, batch_size=2, device=CPU, views=1, inputs=as_float())
    assert math.isclose(alone["val_top1_err"], 2 / 3)


def test_ten_crops_feed_ten_views_per_image_and_average_their_softmax():
    imgs, labels = index_images(5), torch.tensor([0, 1, 2, 3, 4])
    table = torch.randn(5, 6)
    model = TableModel(table, view_weight=0.1)
    out = evaluate_views([model], imgs, labels, batch_size=2, device=CPU, views=10, inputs=as_float(10, 5))
    assert [len(x) for x in model.calls] == [20, 20, 20]  # the last batch topped up to one shape
    assert torch.equal(torch.cat(model.calls)[:50], ten_crop(imgs, 5).float())
    assert torch.equal(model.calls[-1][10:], ten_crop(imgs[4:], 5).float())  # with its first image
    probs = torch.stack([torch.stack([(table[i] + 0.1 * v[0].flatten()[:6]).softmax(0)
                                      for v in ten_crop(imgs[i:i + 1], 5).float()]).mean(0) for i in range(5)])
    assert math.isclose(out["val_top1_err"], 1 - (probs.argmax(1) == labels).sum().item() / 5)
    assert math.isclose(out["val_loss"], -probs[torch.arange(5), labels].log().mean().item(), rel_tol=1e-5)


def test_every_example_counted_once_with_a_short_last_batch():
    imgs, labels = index_images(7), torch.tensor([0, 0, 0, 0, 8, 8, 8])
    model = TableModel(-torch.arange(10.0).repeat(7, 1)).train()  # class 0 first, class 8 ninth
    out = evaluate_views(model, imgs, labels, batch_size=3, device=CPU, views=2, inputs=as_float(2, 6))
    seen = torch.cat(model.calls)[:, 1, 0, 0].long()
    padded = torch.tensor([0, 1, 2, 3, 4, 5, 6, 6, 6])  # the short last batch topped up with its first image
    assert out["examples"] == 7 and torch.equal(seen, padded.repeat_interleave(2))
    assert math.isclose(out["val_top1_err"], 3 / 7) and math.isclose(out["val_top5_err"], 3 / 7)
    assert out["top_class_share"] == 1.0  # class 0 for every image
    assert model.training  # mode restored


def imagenet_pipeline(mean_image, size, std=None):
    return Pipeline(kind="imagenet", size=size, stored=mean_image.shape[-1], flip=True, mean=mean_image,
                    mean_kind="image", std=std, channels_last=False)


def cifar_pipeline(size, padding, mean, std):
    return Pipeline(kind="cifar10", size=size, stored=8, padding=padding, flip=True,
                    mean=torch.tensor(mean).view(3, 1, 1) * 255, mean_kind="channel",
                    std=torch.tensor(std).view(3, 1, 1) * 255)


def test_mean_image_is_cut_like_the_views():
    imgs = index_images(4)
    mean_image = torch.rand(3, 8, 8) * 255
    for crops, size in ((1, 6), (2, 6), (10, 5), (1, 8)):
        prepared, = imagenet_pipeline(mean_image, size).eval_inputs(imgs, crops)
        expected = views(imgs.float() - mean_image, crops, size)  # subtract at stored size, then cut
        torch.testing.assert_close(prepared, expected)


def test_standardize_divides_each_channel_by_its_std_after_the_mean_image():
    imgs = index_images(4)
    mean_image, std = torch.rand(3, 8, 8) * 255, torch.tensor([50.0, 60.0, 70.0]).view(3, 1, 1)
    prepared, = imagenet_pipeline(mean_image, 6, std).eval_inputs(imgs, 10)
    torch.testing.assert_close(prepared, views((imgs.float() - mean_image) / std, 10, 6))


def test_cifar_pipeline_normalises_per_channel_and_keeps_the_whole_image():
    imgs, mean, std = index_images(5), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    pipeline = cifar_pipeline(8, 4, mean, std)
    for count in (1, 2):
        assert torch.equal(pipeline.eval_inputs(imgs, count)[0], normalize(views(imgs, count, None), mean, std))
    ten, = pipeline.eval_inputs(imgs, 10)  # corners of the image padded by 4, as in training
    assert ten.shape == (50, 3, 8, 8)
    assert torch.all(ten[0, :, :4, :4] == -2.0)  # top-left view: zero padding, (0 - 127.5) / 63.75
    torch.testing.assert_close(ten[0, :, 4:, 4:], normalize(imgs[:1, :, :4, :4], mean, std)[0])


def test_four_views_are_the_whole_image_and_its_training_window_each_mirrored():
    from dataclasses import replace

    imgs, labels, mean, std = index_images(5), torch.tensor([0, 1, 2, 3, 4]), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    whole = cifar_pipeline(8, 4, mean, std)
    windows = replace(whole, size=6, padding=0)  # a run trained on 6x6 windows of the 8x8 images
    big, small = windows.eval_inputs(imgs, 4)
    assert torch.equal(big, normalize(views(imgs, 2, None), mean, std))
    assert torch.equal(small, normalize(views(imgs, 2, 6), mean, std))
    four, two = whole.eval_inputs(imgs, 4), whole.eval_inputs(imgs, 2)  # the window is the image: two views
    assert len(four) == len(two) == 1 and torch.equal(four[0], two[0])
    ten, = windows.eval_inputs(imgs, 10)  # the paper's ten patches are training windows, no padding
    assert torch.equal(ten, normalize(ten_crop(imgs, 6), mean, std))
    # pixels as they are
    raw = replace(windows, mean=torch.zeros(3, 1, 1), std=torch.ones(3, 1, 1), channels_last=False)
    big, small = raw.eval_inputs(imgs, 4)
    table = torch.randn(5, 6)
    model = TableModel(table, view_weight=0.1)
    out = evaluate_views([model], imgs, labels, batch_size=2, device=CPU, views=4,
                         inputs=lambda x: raw.eval_inputs(x, 4))
    assert [tuple(x.shape[-2:]) for x in model.calls[:2]] == [(8, 8), (6, 6)]
    each = [[big[2 * i], big[2 * i + 1], small[2 * i], small[2 * i + 1]] for i in range(5)]
    probs = torch.stack([torch.stack([(table[i] + 0.1 * v[0].flatten()[:6]).softmax(0) for v in each[i]]).mean(0)
                         for i in range(5)])
    assert math.isclose(out["val_loss"], -probs[torch.arange(5), labels].log().mean().item(), rel_tol=1e-5)
    imagenet = imagenet_pipeline(torch.zeros(3, 8, 8), 6)
    try:
        imagenet.eval_inputs(imgs, 4)
    except ValueError as err:
        assert "4 views" in str(err)
    else:
        raise AssertionError("4 views must be refused where the network cannot take the whole image")
