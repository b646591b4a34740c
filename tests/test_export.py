"""`alexnet export`: ONNX (onnxruntime), TorchScript and safetensors against PyTorch, the LRN node,
the metadata every format carries, and the torch.hub entry point."""

import contextlib
import dataclasses
import io
import json
from pathlib import Path

import onnx
import onnxruntime
import pytest
import torch

from alexnet import AlexNet, ModelConfig, save_checkpoint
from alexnet.cli import main
from alexnet.data.pipeline import Pipeline
from alexnet.use.export import load_safetensors, quiet_jit, read_info
from fixtures import json_lines, last_json

pytestmark = pytest.mark.slow  # end to end: exports of whole networks

REPO = Path(__file__).resolve().parents[1]
# paper and torchvision at width 0.25: the export numerics do not depend on the width (the full paper
# network exports the same way, ~20 s here: too slow for this file); cifar with an ImageNet-kind
# pipeline (mean image, std, classes) for the metadata.
VARIANTS = {"paper": ModelConfig(width=0.25, init="kaiming", num_classes=10),
            "cifar": ModelConfig(variant="cifar", input_size=32, init="kaiming", num_classes=2),
            "torchvision": ModelConfig(variant="torchvision", width=0.25, init="kaiming", num_classes=10)}
CLASSES = [{"index": 0, "wnid": "n01", "name": "tench"}, {"index": 1, "wnid": "n02", "name": "goldfish"}]


def export(ckpt: Path, fmt: str, out: Path) -> dict:
    """``alexnet export``'s JSON line (the file was written and checked by the command itself)."""
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        assert main(["export", "--checkpoint", str(ckpt), "--format", fmt, "--out", str(out)]) == 0
    return last_json(stdout.getvalue())


def onnx_softmax(path: Path, x: torch.Tensor) -> torch.Tensor:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"image": x.numpy()})[0]).softmax(1)


def checkpoint(folder: Path, variant: str) -> tuple[Path, AlexNet, dict]:
    """A checkpoint of ``variant``; cifar's carries an ImageNet-kind pipeline (3x40x40 mean image,
    std, resize squash) and two named classes, the others the default CIFAR-10 pipeline."""
    torch.manual_seed(0)
    model = AlexNet(VARIANTS[variant]).eval()
    if variant != "cifar":
        return save_checkpoint(folder / "m.pt", model), model, {}
    mean = torch.rand(3, 40, 40) * 255
    pipeline = Pipeline(kind="imagenet", size=32, stored=40, flip=True, mean=mean, mean_kind="image",
                        std=torch.full((3, 1, 1), 60.0), resize="squash")
    config = {"model": dataclasses.asdict(model.config), "data": {"dataset": "imagenet"}}
    path = save_checkpoint(folder / "m.pt", model, config, classes=CLASSES, pipeline=pipeline.state_dict())
    return path, model, pipeline.state_dict()


@pytest.fixture(scope="module", params=list(VARIANTS))
def exported(request, tmp_path_factory):
    """One variant's checkpoint exported in every format by the command: (variant, model, pipeline,
    {format: (file, the command's JSON line)})."""
    folder = tmp_path_factory.mktemp(request.param)
    ckpt, model, pipeline = checkpoint(folder, request.param)
    files = {}
    for fmt in ("onnx", "torchscript", "safetensors"):
        files[fmt] = (folder / f"m.{fmt}", export(ckpt, fmt, folder / f"m.{fmt}"))
    return request.param, model, pipeline, files


def test_exports_match_pytorch_softmax_at_another_batch_size(exported):
    variant, model, _, files = exported
    for fmt, (_, result) in files.items():  # the command's own check: batch 3 against the exported batch 2
        assert result["batch"] == 3 and result["max_abs_diff"] < 1e-4, (fmt, result)
    x = torch.randn(3, 3, model.config.input_size, model.config.input_size) * 60
    with torch.no_grad():
        expected = model(x).softmax(1)
        with quiet_jit():
            scripted = torch.jit.load(str(files["torchscript"][0]))(x).softmax(1)
        from_safetensors = load_safetensors(files["safetensors"][0])(x).softmax(1)
    torch.testing.assert_close(onnx_softmax(files["onnx"][0], x), expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(scripted, expected, atol=1e-4, rtol=0)
    torch.testing.assert_close(from_safetensors, expected)
    graph = onnx.load(str(files["onnx"][0]), load_external_data=False).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named (dynamic) batch axis
    assert not {"LRN", "Pow"} & {n.op_type for n in graph.node}
    assert "AveragePool" not in {n.op_type for n in graph.node} or variant == "torchvision"  # its adaptive pool


def test_lrn_is_a_band_of_ones_over_the_squares_after_relu(exported):
    """The LRN's window sum as a 1x1 convolution with a 0/1 band matrix (``nn.lrn.lrn_by_band``): onnxruntime's
    own LRN kernel was most of the int8 network's time."""
    variant, _, _, files = exported
    graph = onnx.load(str(files["onnx"][0]), load_external_data=False).graph
    made_by = {out: node for node in graph.node for out in node.output}
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    bands = [n for n in graph.node if n.op_type == "Conv" and weights[n.input[1]].shape[2:] == (1, 1)]
    assert len(bands) == (0 if variant == "torchvision" else 2)
    for node in bands:
        w = torch.tensor(weights[node.input[1]])[:, :, 0, 0]
        i = torch.arange(len(w))
        assert torch.equal(w, ((i[:, None] - i[None]).abs() <= 2).float())  # window 5, centred, cut at the edges
        squares = made_by[node.input[0]]
        assert squares.op_type == "Mul" and squares.input[0] == squares.input[1]
        assert made_by[squares.input[0]].op_type == "Relu"


CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def described_pipeline(variant: str, size: int) -> tuple:
    """What an export must say of its preprocessing: cifar's checkpoint carries an ImageNet-kind
    pipeline; the others none, so the CIFAR-10 default (per-channel mean and std) at their input size."""
    if variant == "cifar":
        return "imagenet", 32, 40, "squash", "image", [60.0] * 3
    return "cifar10", size, size, "center", "channel", pytest.approx([62.985, 62.0925, 66.708])


def test_every_format_carries_config_classes_and_preprocessing(exported):
    variant, model, pipeline, files = exported
    size = model.config.input_size
    classes = CLASSES if variant == "cifar" else [{"index": i, "wnid": n, "name": n} for i, n in enumerate(CIFAR10)]
    for fmt, (path, result) in files.items():
        assert Path(result["sidecar"]) == path.with_name(path.name + ".json")
        for info in (read_info(path), json.loads(Path(result["sidecar"]).read_text())):
            pre = info["preprocessing"]
            assert info["model"] == dataclasses.asdict(model.config) and info["classes"] == classes, fmt
            described = (pre["kind"], pre["size"], pre["stored"], pre["resize"], pre["mean_kind"], pre["std"])
            assert described == described_pipeline(variant, size), fmt
            if variant == "cifar":
                assert torch.equal(torch.tensor(pre["mean"]), pipeline["mean"]), fmt  # float32 survives JSON exactly
            else:
                assert pre["mean"] == pytest.approx([125.307, 122.961, 113.8575]), fmt
    props = {p.key: p.value for p in onnx.load(str(files["onnx"][0])).metadata_props}
    mean = json.loads(props["alexnet"])["preprocessing"]["mean"]
    if variant == "cifar":
        assert "m.onnx.json" in mean  # a mean image is too large for the metadata: it names the sidecar
    else:
        assert mean == pytest.approx([125.307, 122.961, 113.8575])  # three numbers travel in the file itself


def test_safetensors_round_trip_keeps_load_safetensors(tmp_path):
    model = AlexNet(ModelConfig(variant="cifar", num_classes=10, input_size=32, width=0.25)).eval()
    ckpt = save_checkpoint(tmp_path / "m.pt", model)
    export(ckpt, "safetensors", tmp_path / "m.safetensors")
    loaded = load_safetensors(tmp_path / "m.safetensors")
    x = torch.randn(2, 3, 32, 32)
    assert loaded.config == model.config
    torch.testing.assert_close(loaded(x), model(x))
    assert read_info(tmp_path / "m.safetensors")["preprocessing"]["mean"] == pytest.approx([125.307, 122.961, 113.8575])


def test_a_file_that_is_not_a_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint")
    assert main(["export", "--checkpoint", str(bad), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert str(bad) in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_hub_loads_a_checkpoint_and_the_untrained_paper_network(tmp_path):
    model = AlexNet(ModelConfig(variant="cifar", num_classes=10, input_size=32, width=0.25)).eval()
    ckpt = save_checkpoint(tmp_path / "m.pt", model)
    hub = torch.hub.load(str(REPO), "alexnet", source="local", checkpoint=str(ckpt))
    x = torch.randn(2, 3, 32, 32)
    assert hub.config == model.config and not hub.training
    torch.testing.assert_close(hub(x), model(x))
    paper = torch.hub.load(str(REPO), "alexnet", source="local")
    assert paper.config == ModelConfig() and sum(p.numel() for p in paper.parameters()) == 60_965_224


@pytest.mark.slow
def test_int8_onnx_is_calibrated_on_photos_and_agrees_with_float32(tmp_path, capsys):
    """onnxruntime's static quantisation calibrated on real photos through the network's preprocessing: an
    int8 file (Conv and Gemm with int8 weights) carrying the classes and preprocessing, whose top-1 agrees with
    float32 on the calibration photos."""
    import shutil

    from fixtures import SAMPLES, tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    photos = tmp_path / "photos"
    photos.mkdir()
    for f in sorted(SAMPLES.glob("*.JPEG"))[:24]:
        shutil.copy(f, photos / f.name)
    out = tmp_path / "tiny-int8.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--quantize", "int8", "--calibration",
                 str(photos), "--out", str(out)]) == 0
    result = last_json(capsys.readouterr().out)
    assert result["quantized"] == "int8" and result["calibration_images"] == 24
    assert result["top1_agreement"] >= 0.75, result
    model = onnx.load(str(out))
    kinds = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Exp"} <= kinds  # the LRN's band stays float
    int8 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8) >= 8  # the weights of conv1 ... fc8
    info = read_info(out)
    assert info["quantized"] == "int8" and [c["name"] for c in info["classes"]] == ["cat", "dog", "fish"]
    assert not list(tmp_path.glob("*.tmp*")) and out.stat().st_size < 0.4 * (ckpt.stat().st_size)
    assert main(["export", "--checkpoint", str(ckpt), "--format", "torchscript", "--quantize", "int8",
                 "--calibration", str(photos), "--out", str(tmp_path / "x.pt")]) == 2
    assert "--format onnx" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--quantize", "int8", "--out",
                 str(tmp_path / "y.onnx")]) == 2
    assert "go together" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_and_serve_take_an_exported_onnx_file_with_its_classes(tmp_path, capsys):
    """A .onnx file is a model: predict gives the checkpoint's classes and probabilities (float32: to 1e-4;
    int8: the same top class on most photos), serve answers /predict from it and refuses /explain (no layers)."""
    import shutil

    import httpx
    from test_serve import Running

    from alexnet.use.predictor import Predictor
    from alexnet.use.serve.app import ServeConfig, build_app
    from fixtures import SAMPLES, tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    photos = tmp_path / "photos"
    photos.mkdir()
    for f in sorted(SAMPLES.glob("*.JPEG"))[:8]:
        shutil.copy(f, photos / f.name)
    onnx_file, int8_file = tmp_path / "tiny.onnx", tmp_path / "tiny-int8.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(onnx_file)]) == 0
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--quantize", "int8", "--calibration",
                 str(photos), "--out", str(int8_file)]) == 0
    capsys.readouterr()

    def predicted(model, *more) -> list[dict]:
        assert main(["predict", "--checkpoint", str(model), str(photos), "--json", "--topk", "3", *more]) == 0
        return json_lines(capsys.readouterr().out)

    ours, fp32, int8 = predicted(ckpt, "--precision", "fp32"), predicted(onnx_file), predicted(int8_file)
    for a, b in zip(ours, fp32):
        assert [t["name"] for t in a["top"]] == [t["name"] for t in b["top"]]
        assert max(abs(x["prob"] - y["prob"]) for x, y in zip(a["top"], b["top"])) < 1e-4
    assert sum(a["top"][0]["index"] == c["top"][0]["index"] for a, c in zip(ours, int8)) >= 6
    assert {t["name"] for r in int8 for t in r["top"]} <= {"cat", "dog", "fish"}
    assert main(["explain", "--checkpoint", str(onnx_file), str(photos), "--out", str(tmp_path / "maps")]) == 2
    assert "not an exported .onnx" in capsys.readouterr().err
    running = Running(build_app(Predictor.from_onnx(int8_file), "tiny-int8.onnx"), ServeConfig())
    try:
        data = (photos / sorted(p.name for p in photos.iterdir())[0]).read_bytes()
        answer = httpx.post(f"{running.url}/predict", files={"file": ("p.jpg", data)}, timeout=30)
        assert answer.status_code == 200 and answer.json()["model"] == "tiny-int8.onnx", answer.text
        assert answer.json()["top"][0]["name"] in ("cat", "dog", "fish")
        refused = httpx.post(f"{running.url}/explain", files={"file": ("p.jpg", data)}, timeout=30)
        assert refused.status_code == 501 and ".onnx" in refused.json()["error"]
    finally:
        running.stop()


def test_eval_and_retrieve_take_an_exported_onnx_file(tmp_path, capsys, data_cache):
    """eval reads the dataset an export's preprocessing names and gives the checkpoint's numbers (float32)
    on the views its one input side allows; retrieve ranks by the file's fc7 output as by the checkpoint's.
    The data: a CIFAR-10-shaped tarball of 40 test images, decoded in this process (the full one would be
    decoded by a forked pool, which a process already running onnxruntime's threads should not fork)."""
    import shutil

    from test_benchmarks import tiny_tarball

    from fixtures import SAMPLES, recipe_checkpoint

    tarball = tiny_tarball(tmp_path / "tiny-cifar10.tar.gz", per_class=4)
    ckpt = recipe_checkpoint(tmp_path / "cifar.pt", "cifar10", ["model.width=0.25"])  # 28x28 windows of 32x32 images
    onnx_file = tmp_path / "cifar.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(onnx_file)]) == 0
    capsys.readouterr()

    def command_json(*args) -> dict:
        assert main([*map(str, args)]) == 0
        return last_json(capsys.readouterr().out)

    theirs = command_json("eval", "--checkpoint", onnx_file, "--data", tarball)
    ours = command_json("eval", "--checkpoint", ckpt, "--crops", "2", "--precision", "fp32", "--data", tarball)
    assert theirs["crops"] == 2 and theirs["examples"] == ours["examples"] == 40  # the run's 4 views need 28x28
    assert theirs["val_top1_err"] == ours["val_top1_err"]
    assert theirs["val_loss"] == pytest.approx(ours["val_loss"], abs=1e-4)
    assert main(["eval", "--checkpoint", str(onnx_file), "--crops", "10", "--data", str(tarball)]) == 2
    assert "takes 32x32 inputs only" in capsys.readouterr().err
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for f in sorted(SAMPLES.glob("*.JPEG"))[:6]:
        shutil.copy(f, gallery / f.name)
    query = sorted(SAMPLES.glob("*.JPEG"))[10]
    found = [command_json("retrieve", "--checkpoint", model, "--gallery", gallery, query, "--k", 3, "--json",
                       "--precision", "fp32") for model in (ckpt, onnx_file)]
    assert [n["file"] for n in found[0]["neighbours"]] == [n["file"] for n in found[1]["neighbours"]]
    distances = [[n["distance"] for n in f["neighbours"]] for f in found]
    assert distances[1] == pytest.approx(distances[0], rel=1e-4)
