"""How predict, retrieve, eval and serve run the network (use/inference.py): pinned, so that a slow path
(fp32 on a bf16 CPU, the eager LRN for thousands of images, weights in the wrong layout) cannot come back
unseen, and the fast settings still give fp32's answers."""

import pytest
import torch

from alexnet.cli import main
from alexnet.runs.load import load_run
from alexnet.use import inference
from alexnet.use.inference import COMPILE_FROM, Settings, choose
from alexnet.use.predictor import Predictor, load_predictor
from fixtures import SAMPLES, tiny_checkpoint

CPU = torch.device("cpu")
PHOTOS = sorted(SAMPLES.glob("*.JPEG"))[:3]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture
def compiler(monkeypatch):
    """As on a user's machine: torch.compile allowed (the suite switches it off, conftest.py)."""
    monkeypatch.delenv("ALEXNET_COMPILE", raising=False)


@pytest.mark.parametrize("native", [True, False])
def test_the_settings_each_amount_of_work_gets(compiler, monkeypatch, native):
    monkeypatch.setattr(inference, "native_bf16", lambda device: native)
    auto = "bf16" if native else "fp32"
    assert choose(CPU, None) == Settings(auto, True, "compiled")  # a server: any amount, compiled at start-up
    assert choose(CPU, COMPILE_FROM) == Settings(auto, True, "compiled")  # thousands of photos
    assert choose(CPU, COMPILE_FROM - 1) == Settings(auto, True, "eager")  # a few: compiling would cost more
    assert choose(CPU, 10_000, "fp32").precision == "fp32" and choose(CPU, 1, "bf16").precision == "bf16"


def test_no_compiler_means_the_eager_lrn_and_a_bad_precision_is_refused(monkeypatch):
    monkeypatch.setenv("ALEXNET_COMPILE", "0")
    assert choose(CPU, None).lrn == "eager"
    from alexnet.errors import UsageError

    with pytest.raises(UsageError, match="--precision must be one of auto, bf16, fp32; got 'fp16'"):
        choose(CPU, None, "fp16")


def test_a_predictor_runs_bf16_weights_channels_last_and_the_dynamic_compiled_lrn(compiler, monkeypatch, checkpoint):
    """What the settings turn into, without running (compiling would take seconds): the network the forward
    passes take, and the float32 one explain's gradients take."""
    monkeypatch.setattr(inference, "native_bf16", lambda device: True)
    predictor = load_predictor(checkpoint, "cpu", 16, work=None)
    net, model = predictor.net, predictor.model
    assert predictor.settings == Settings("bf16", True, "compiled") and predictor.precision == "bf16"
    assert net is not model and net.conv1.weight.dtype == torch.bfloat16 and model.conv1.weight.dtype == torch.float32
    for network in (net, model):
        assert not network.training
        assert network.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        assert all(lrn.compiled and lrn.dynamic for lrn in (network.lrn1, network.lrn2))
    assert predictor.decode_ahead() == 512 // 16  # decoding goes on while the LRN compiles
    fp32 = load_predictor(checkpoint, "cpu", 16, work=1, precision="fp32")
    assert fp32.net is fp32.model and not fp32.net.lrn1.compiled and fp32.decode_ahead() == 1


def test_bf16_answers_as_fp32_does(checkpoint):
    from alexnet.data.images import decode_file

    fast = Predictor.from_run(load_run(checkpoint), "cpu", settings=Settings("bf16", True, "eager"))
    exact = Predictor.from_run(load_run(checkpoint), "cpu", settings=Settings("fp32", False, "eager"))
    images = torch.stack([decode_file(p.read_bytes(), exact.pipeline) for p in PHOTOS])
    for views in (1, 10):
        a, b = fast.probabilities(images, views), exact.probabilities(images, views)
        assert torch.equal(a.argmax(1), b.argmax(1)) and (a - b).abs().max() < 0.02, views
        assert not torch.equal(a, b)  # bf16 did run
    torch.testing.assert_close(fast.features(images), exact.features(images), atol=0.05, rtol=0.05)


def test_the_commands_ask_for_their_amount_of_work(monkeypatch, checkpoint, tmp_path, capsys):
    """predict sets up for its files x views, retrieve for its gallery and queries, serve for any amount."""
    asked = []

    def spy(device, work, precision="auto"):
        asked.append((work, precision))
        return Settings(precision if precision != "auto" else "fp32", True, "eager")

    monkeypatch.setattr("alexnet.use.predictor.choose", spy)
    assert main(["predict", "--checkpoint", str(checkpoint), *map(str, PHOTOS), "--crops", "10", "--json"]) == 0
    assert asked.pop() == (len(PHOTOS) * 10, "auto")
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for p in PHOTOS:
        (gallery / p.name).write_bytes(p.read_bytes())
    assert main(["retrieve", "--checkpoint", str(checkpoint), "--gallery", str(gallery), str(PHOTOS[0]),
                 "--precision", "fp32", "--json"]) == 0
    assert asked.pop() == (len(PHOTOS) + 1, "fp32")
    capsys.readouterr()
    served = []
    monkeypatch.setattr("alexnet.use.serve.app.serve", lambda predictor, *args: served.append(predictor))
    assert main(["serve", "--checkpoint", str(checkpoint), "--port", "0"]) == 0
    assert asked.pop() == (None, "auto") and served


@pytest.mark.cuda
def test_a_gpu_predictor_answers_as_the_cpu_one(cuda, checkpoint):
    """predict on a GPU: bf16 there too (where supported), the compiled LRN, the CPU's top classes."""
    from alexnet.data.images import decode_file

    gpu = load_predictor(checkpoint, "cuda", 16, work=None)
    cpu = load_predictor(checkpoint, "cpu", 16, work=1, precision="fp32")
    assert gpu.device.type == "cuda" and gpu.net.conv1.weight.is_cuda
    images = torch.stack([decode_file(p.read_bytes(), cpu.pipeline) for p in PHOTOS])
    a, b = gpu.probabilities(images, 10), cpu.probabilities(images, 10)
    assert torch.equal(a.argmax(1), b.argmax(1)) and (a - b).abs().max() < 0.02
