"""alexnet retrieve and alexnet.features: fc7 neighbours (Figure 4, right), the gallery cache."""

import shutil

import pytest
import torch

import alexnet
from alexnet.cli import main
from alexnet.nn.model import AlexNet, ModelConfig
from alexnet.runs.load import load_run
from alexnet.use import retrieve
from alexnet.use.predictor import Predictor
from fixtures import SAMPLES, json_lines, lrn_formula, tiny_checkpoint

PHOTOS = sorted(SAMPLES.glob("*.JPEG"))[::100][:8]  # eight real photos of different classes


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture
def gallery(tmp_path):
    folder = tmp_path / "gallery"
    (folder / "sub").mkdir(parents=True)
    for i, path in enumerate(PHOTOS):
        shutil.copy(path, folder / ("sub" if i % 2 else ".") / path.name)
    (folder / "broken.jpg").write_bytes(PHOTOS[0].read_bytes()[:3000])
    return folder


def count_network_images(monkeypatch) -> list[int]:
    """Record how many images each ``Predictor.features`` call runs through the network."""
    calls, original = [], Predictor.features

    def counted(self, images, layer="fc7"):
        calls.append(len(images))
        return original(self, images, layer)

    monkeypatch.setattr(Predictor, "features", counted)
    return calls


def retrieve_json(capsys, checkpoint, gallery, *queries, k=3):
    code = main(["retrieve", "--checkpoint", str(checkpoint), "--gallery", str(gallery), *map(str, queries),
                 "--k", str(k), "--json", "--device", "cpu"])
    out, err = capsys.readouterr()
    return code, json_lines(out), err


@pytest.mark.slow
def test_exact_copy_first_and_second_call_uses_the_cache(checkpoint, gallery, tmp_path, capsys, monkeypatch):
    query = tmp_path / "query.jpg"
    shutil.copy(PHOTOS[3], query)  # the same bytes as gallery/sub/<PHOTOS[3]>
    calls = count_network_images(monkeypatch)
    code, records, err = retrieve_json(capsys, checkpoint, gallery, query)
    assert code == 0 and len(records) == 1 and records[0]["query"] == str(query)
    first, *rest = records[0]["neighbours"]
    assert first == {"file": str(gallery / "sub" / PHOTOS[3].name), "distance": 0.0}
    assert len(rest) == 2 and all(n["distance"] > 0 for n in rest)
    assert rest[0]["distance"] <= rest[1]["distance"]
    assert "broken.jpg skipped: truncated JPEG data" in err
    assert calls == [len(PHOTOS), 1]  # the readable gallery images (the broken one is decoded, not run), the query
    assert len(list(gallery.glob(".alexnet-features-*.safetensors"))) == 1

    calls.clear()
    code, again, err = retrieve_json(capsys, checkpoint, gallery, query)
    assert code == 0 and again == records
    assert calls == [1]  # only the query went through the network
    assert "broken.jpg skipped" in err and "run through the network" not in err


@pytest.mark.slow
def test_changed_file_recomputes_only_it_and_other_weights_everything(checkpoint, gallery, tmp_path):
    predictor = Predictor.from_run(load_run(checkpoint), "cpu", batch_size=4)
    first = retrieve.gallery_features(predictor, gallery)
    assert first.computed == len(PHOTOS) + 1 and len(first.files) == len(PHOTOS)
    assert retrieve.gallery_features(predictor, gallery).computed == 0
    changed = gallery / PHOTOS[0].name
    changed.write_bytes(SAMPLES.joinpath(sorted(p.name for p in SAMPLES.glob("*.JPEG"))[1]).read_bytes())
    shutil.copy(PHOTOS[1], gallery / "copy_of_one.jpg")  # the same bytes as a cached file: reused
    (gallery / "sub" / PHOTOS[-1].name).unlink()
    second = retrieve.gallery_features(predictor, gallery)
    assert second.computed == 1 and len(second.files) == len(PHOTOS)
    row = {f.name: i for i, f in enumerate(second.files)}
    assert torch.equal(second.features[row["copy_of_one.jpg"]], second.features[row[PHOTOS[1].name]])
    fresh = retrieve.gallery_features(predictor, gallery)  # the cache agrees with computing anew
    other = tiny_checkpoint(tmp_path / "other.pt", seed=1)
    # 7 photos left + the broken file + a copy computed once: every distinct content anew
    assert retrieve.gallery_features(Predictor.from_run(load_run(other), "cpu"), gallery).computed == len(PHOTOS)
    assert len(list(gallery.glob(".alexnet-features-*.safetensors"))) == 2  # one per network
    assert fresh.computed == 0 and torch.equal(fresh.features, second.features)


def test_read_only_gallery_caches_under_alexnet_data(checkpoint, gallery, tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(retrieve.os, "access", lambda *_: False)
    predictor = Predictor.from_run(load_run(checkpoint), "cpu")
    assert retrieve.gallery_features(predictor, gallery).computed == len(PHOTOS) + 1
    assert retrieve.gallery_features(predictor, gallery).computed == 0
    assert len(list((tmp_path / "data" / "retrieve").glob("gallery-*.safetensors"))) == 1


def test_bad_query_and_usage(checkpoint, gallery, tmp_path, capsys):
    (tmp_path / "bad.jpg").write_text("hello")
    code, records, err = retrieve_json(capsys, checkpoint, gallery, tmp_path / "bad.jpg", PHOTOS[0], k=2)
    assert code == 1
    assert records[0] == {"query": str(tmp_path / "bad.jpg"), "error": "not an image Pillow can read (text)"}
    assert [n["distance"] for n in records[1]["neighbours"]][0] == 0.0
    assert main(["retrieve", "--checkpoint", str(checkpoint), "--gallery", str(tmp_path / "none"), str(PHOTOS[0])]) == 2
    assert "--gallery" in capsys.readouterr().err


def reference(model: AlexNet, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The network's stages walked by hand in float64 on copies of its weights, as in evaluation (no
    dropout): grouped convolutions and pools from nn.functional, the LRN from its formula (fixtures.py); the
    activations at every tap."""
    from torch.nn import functional as F

    c, w = model.config, {k: v.double() for k, v in model.state_dict().items()}
    paper, groups = c.variant != "torchvision", (2 if c.towers and c.variant != "torchvision" else 1)
    taps, x = {}, x.double()

    def conv(name, x, stride=1, padding=1, groups=1):
        return torch.relu(F.conv2d(x, w[f"{name}.weight"], w[f"{name}.bias"], stride, padding, groups=groups))

    x = conv("conv1", x, 4, 2)
    taps["conv1"] = x = lrn_formula(x, c.lrn_k) if paper else x
    taps["pool1"] = x = F.max_pool2d(x, 3, 2)
    x = conv("conv2", x, 1, 2, groups)
    taps["conv2"] = x = lrn_formula(x, c.lrn_k) if paper else x
    taps["pool2"] = x = F.max_pool2d(x, 3, 2)
    taps["conv3"] = x = conv("conv3", x)
    taps["conv4"] = x = conv("conv4", x, groups=groups)
    taps["conv5"] = x = conv("conv5", x, groups=groups)
    x = F.max_pool2d(x, 3, 2)
    taps["pool5"] = x = (x if paper else F.adaptive_avg_pool2d(x, 6)).flatten(1)
    for name in ("fc6", "fc7", "fc8"):
        x = F.linear(x, w[f"{name}.weight"], w[f"{name}.bias"])
        taps[name] = x = x if name == "fc8" else torch.relu(x)
    return taps


@pytest.mark.parametrize("variant", ["paper", "torchvision"])
def test_features_are_evaluation_activations(variant):
    model = AlexNet(ModelConfig(variant=variant, num_classes=5, width=0.25, init="kaiming"))
    x = torch.randn(2, 3, 224, 224) * 40
    expected = reference(model, x)
    if variant == "paper":  # the inputs are large enough that the LRN's sum matters, not only its k ** -beta
        weight, bias = model.conv1.weight.double(), model.conv1.bias.double()
        conv1 = torch.relu(torch.nn.functional.conv2d(x.double(), weight, bias, 4, 2))
        assert ((expected["conv1"] / conv1)[conv1 > 0] * 2.0 ** 0.75).min() < 0.9
    model.train()  # dropout on: features must not use it, and must leave the mode as it was
    for layer, want in expected.items():
        got = alexnet.features(model, x, layer)
        scale = want.abs().max().item()  # float32 against float64: rounding of the largest activations
        torch.testing.assert_close(got.double(), want, atol=1e-5 * scale, rtol=0, msg=layer)
        assert not got.requires_grad
    assert model.training
    fc7 = alexnet.features(model, x, "fc7")
    assert fc7.shape == (2, model.fc7.out_features) and fc7.min() >= 0 and fc7.abs().sum() > 0
    with pytest.raises(ValueError, match="one of conv1, pool1"):
        alexnet.features(model, x, "conv9")
