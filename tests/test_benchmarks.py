"""Every script in benchmarks/ runs end to end at toy sizes, each in its own process as a user runs it,
and prints the JSON line it should (one of them, recipes.py, was once broken for weeks by an import
error nobody saw; --help alone is in test_layout.py). The speeds printed at these sizes mean nothing:
the tests check that the scripts run, say what they should and leave nothing behind. Every output goes
to tmp_path (TMPDIR too), every cache to the session's private ALEXNET_DATA (conftest.data_cache)."""

import importlib.util
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from fixtures import SAMPLES, recipe_checkpoint, tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py"))
LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]


def run_script(script: str, *args, tmp_path: Path, cache: Path, timeout: int = 180) -> dict:
    """``python benchmarks/<script> ARGS`` from the repository root with our environment, ALEXNET_DATA
    set to ``cache`` and TMPDIR to a folder in ``tmp_path``; the JSON of its last stdout line."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = {**os.environ, "ALEXNET_DATA": str(cache), "TMPDIR": str(tmp_path / "tmp")}
    out = subprocess.run([sys.executable, f"benchmarks/{script}", *map(str, args)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"benchmarks/{script} failed ({out.returncode}):\n{out.stderr[-4000:]}"
    lines = out.stdout.strip().splitlines()
    assert lines, f"benchmarks/{script} printed nothing on stdout:\n{out.stderr[-4000:]}"
    return json.loads(lines[-1])


def photos(folder: Path, n: int, start: int = 0) -> list[Path]:
    """Copies of ``n`` of the shared sample JPEGs in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(src, folder)) for src in sorted(SAMPLES.glob("*.JPEG"))[start:start + n]]


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_every_benchmark_script_has_a_smoke_test():
    tested = {name.removeprefix("test_").removesuffix("_smoke") + ".py" for name in globals()
              if name.startswith("test_") and name.endswith("_smoke")}
    assert set(SCRIPTS) <= tested, f"benchmark scripts without a smoke test here: {sorted(set(SCRIPTS) - tested)}"


@pytest.mark.slow
def test_data_smoke(tmp_path, data_cache):
    photos(tmp_path / "src", 8)
    result = run_script("data.py", "--src", tmp_path / "src", "--images", 16, "--seconds", 0.05,
                        tmp_path=tmp_path, cache=data_cache)
    assert result["bench"] == "data" and result["images"] == 16 and result["source_images"] == 8
    for key in ("images_per_s_per_core", "torchvision_images_per_s_per_core", "speedup_per_core_vs_torchvision",
                "prepare_images_per_s_per_core", "pil_prepare_images_per_s_per_core", "prepare_speedup_vs_pil"):
        assert positive(result[key]), (key, result[key])
    assert not list((tmp_path / "tmp").glob("alexnet-bench-*")), "bench_data left its work folder behind"


@pytest.mark.slow
def test_lrn_smoke(tmp_path, data_cache):
    result = run_script("lrn.py", "--batch", 0.05, "--reps", 1, "--threads", 1, tmp_path=tmp_path, cache=data_cache)
    assert result["threads"] == 1 and result["batch_scale"] == 0.05
    assert result["paper_conv1"]["shape"] == [3, 96, 55, 55] and result["cifar_conv1"]["shape"] == [13, 64, 32, 32]
    for name in ("paper_conv1", "cifar_conv1"):
        for key in ("torch_ms", "speedup_fp32", "speedup_bf16"):
            assert positive(result[name][key]), (name, key, result[name][key])


@pytest.mark.slow
def test_paper_start_smoke(tmp_path, data_cache):
    for split, start in (("train", 0), ("val", 6)):  # an ImageFolder: 2 classes x 3 photos per split
        for c in range(2):
            photos(tmp_path / "photos" / split / f"class{c}", 3, start + 3 * c)
    result = run_script("paper_start.py", "--data", tmp_path / "photos", "--images", 4,
                        tmp_path=tmp_path, cache=data_cache)
    assert result["images"] == 4 and result["fc7_units"] == 4096 and positive(result["fc7_mean_vector_norm2"])
    assert result["stability_bound"] == pytest.approx(2 * 1.9) and result["lr"] == 0.01
    assert list(result["classes"]) == ["2", "10", "20", "50", "100", "1000"]
    ratios = [found["lr_x_curvature_vs_bound"] for found in result["classes"].values()]
    assert all(map(positive, ratios)) and ratios == sorted(ratios, reverse=True)  # fewer classes, steeper
    for found in result["classes"].values():  # the ratio is lr over the largest stable lr
        assert found["lr_x_curvature_vs_bound"] == pytest.approx(0.01 / found["largest_stable_lr"], rel=0.02)
    assert list(result["signal"]) == LAYERS and all(0 <= v <= 2 for v in result["signal"].values())
    assert list((data_cache / "prepared").glob("photos-*")), "the ImageFolder was not prepared into ALEXNET_DATA"


@pytest.mark.slow
def test_pca_scale_smoke(tmp_path, data_cache):
    photos(tmp_path / "photos", 8)
    (tmp_path / "photos" / "broken.JPEG").write_bytes(b"not a JPEG")  # reported, not fatal
    result = run_script("pca_scale.py", tmp_path / "photos", tmp_path=tmp_path, cache=data_cache)
    assert result["images"] == 8 and len(result["skipped"]) == 1 and "broken.JPEG" in result["skipped"][0]
    eigval = result["eigval_0_1_scale"]
    assert all(map(positive, eigval)) and eigval == sorted(eigval, reverse=True)
    assert result["sqrt_levels_per_unit_alpha"] == pytest.approx([math.sqrt(v) * 255 for v in eigval], abs=0.3)
    assert result["fb_levels_per_unit_alpha"] == pytest.approx([v * 255 for v in eigval], abs=0.1)
    for scale in ("sqrt", "fb"):
        rms = 0.1 * math.sqrt(sum(v * v for v in result[f"{scale}_levels_per_unit_alpha"]))
        assert result[f"{scale}_rms_shift_levels"] == pytest.approx(rms, abs=0.1)


CIFAR = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def tiny_tarball(path: Path, per_class: int = 2, classes=CIFAR, shade: int = 0) -> Path:
    """A tarball laid out as the shared CIFAR-10 one (cifar10/{train,test}/<class>/NNNN.jpg) holding
    ``per_class`` generated 32x32 JPEGs per class and split, each a flat colour with a gradient."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for split in ("train", "test"):
            for c, name in enumerate(classes):
                for i in range(per_class):
                    image = Image.linear_gradient("L").resize((32, 32)).convert("RGB")
                    image.paste((25 * c + shade, 40 * i + 60, 200 - 15 * c), (0, 0, 16, 32))
                    data = io.BytesIO()
                    image.save(data, "JPEG", quality=90)
                    member = tarfile.TarInfo(f"cifar10/{split}/{name}/{i:04d}.jpg")
                    member.size = data.tell()
                    archive.addfile(member, io.BytesIO(data.getvalue()))
    return path


def test_recipes_extracts_each_tarball_into_its_own_folder(tmp_path, monkeypatch):
    """recipes.image_folder keys its cache folder by the tarball (name, size, mtime): another tarball of
    the same name, or this one rewritten, is extracted anew, never answered with a stale extraction."""
    spec = importlib.util.spec_from_file_location("bench_recipes", ROOT / "benchmarks" / "recipes.py")
    recipes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipes)
    monkeypatch.setenv("ALEXNET_DATA", str(tmp_path / "cache"))
    first = recipes.image_folder(tiny_tarball(tmp_path / "a" / "tiny.tar.gz", classes=CIFAR[:2]))
    assert first.is_relative_to(tmp_path / "cache") and sorted(p.name for p in (first / "test").iterdir()) == [
        "airplane", "automobile"]
    assert recipes.image_folder(tmp_path / "a" / "tiny.tar.gz") == first  # the same tarball: reused
    second = recipes.image_folder(tiny_tarball(tmp_path / "b" / "tiny.tar.gz", classes=CIFAR[:3]))
    assert second != first and len(list((second / "train").iterdir())) == 3
    assert not list((tmp_path / "cache" / "benchmarks").glob(".*")), "a temporary extraction was left behind"


@pytest.mark.slow
def test_recipes_smoke(tmp_path, data_cache):
    tarball = tiny_tarball(tmp_path / "tiny-cifar10.tar.gz")
    overrides = ["model.width=0.125", "data.batch_size=8", "data.eval_batch_size=8"]
    result = run_script("recipes.py", "--epochs", 1, "--limit", 20, "--recipes", "imagenet", "--out", tmp_path / "runs",
                        "--tarball", tarball, *overrides, tmp_path=tmp_path, cache=data_cache)
    assert result["limit"] == 20 and result["epochs"] == 1 and result["overrides"] == overrides
    assert result["chance_loss"] == pytest.approx(math.log(10)) and "paper" not in result
    run = result["imagenet"]
    assert {"epoch1_loss", "epoch1_loss_end", "epoch1_loss_end_vs_chance", "val_top1_err", "val_top5_err",
            "train_seconds", "losses", "val_top1_errs"} <= set(run)
    assert positive(run["epoch1_loss_end_vs_chance"]) and len(run["losses"]) == 1 and positive(run["losses"][0])
    assert result["imagenet_epoch1_loss_vs_chance"] == run["epoch1_loss_end_vs_chance"]
    assert 0 <= run["val_top5_err"] <= run["val_top1_err"] <= 1
    assert (tmp_path / "runs" / "imagenet" / "summary.json").is_file()
    extracted = list((data_cache / "benchmarks").glob("tiny-cifar10-*/cifar10/train"))
    assert len(extracted) == 1 and len(list(extracted[0].iterdir())) == 10, "not extracted into ALEXNET_DATA"


def processes_naming(text: str) -> list[str]:
    """Command lines of this machine's processes that contain ``text`` (Linux' /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended meanwhile
            continue
        if text in line:
            found.append(line)
    return found


@pytest.mark.slow
def test_serve_load_smoke(tmp_path, data_cache):
    result = run_script("serve_load.py", "--images", 8, "--clients", 2, "--rounds", 1, "--threads", 1,
                        "--width", 0.25, "--samples", SAMPLES, tmp_path=tmp_path, cache=data_cache)
    assert result["benchmark"] == "serve_load" and result["images"] == 8 and result["rounds"] == 1
    assert result["checkpoint"] == "paper network, random weights, width 0.25"
    for name in ("batched", "one_at_a_time"):
        found = result[name]
        assert positive(found["requests_per_s"]) and 0 < found["p50_ms"] <= found["p99_ms"], found
    assert result["batched"]["mean_batch"] >= 1 and result["one_at_a_time"]["mean_batch"] == 1
    assert len(result["gain_per_round"]) == 1 and positive(result["batching_gain"])
    if Path("/proc").is_dir():  # both servers (their checkpoint lay in our TMPDIR) have ended
        assert not processes_naming(str(tmp_path)), processes_naming(str(tmp_path))


@pytest.mark.slow
def test_transfer_smoke(tmp_path, data_cache):
    tarball = tiny_tarball(tmp_path / "tiny-cifar10.tar.gz", per_class=3)
    overrides = ["optim.epochs=2", "data.batch_size=4", "data.eval_batch_size=8"]
    pretrained = tiny_checkpoint(tmp_path / "pretrained.pt")  # instead of training one on the old classes
    result = run_script("transfer.py", "--tarball", tarball, "--out", tmp_path / "runs", "--pretrained", pretrained,
                        "--per-class", 2, "--val-per-class", 2, *overrides, "model.width=0.25", tmp_path=tmp_path,
                        cache=data_cache, timeout=300)
    assert result["per_class"] == 2 and result["init"] == str(pretrained)
    for way in ("finetune", "probe", "scratch"):
        run = result[way]
        assert 0 <= run["val_top1_err"] <= 1 and run["epochs"] == 2 and positive(run["seconds"]), way
        assert positive(run["train_seconds_per_epoch"]), way
    assert result["finetune_points_better_than_scratch"] == pytest.approx(
        100 * (result["scratch"]["val_top1_err"] - result["finetune"]["val_top1_err"]), abs=0.1)
    new = tmp_path / "runs" / "data" / "new"
    assert sorted(p.name for p in (new / "train").iterdir()) == ["dog", "frog", "horse", "ship", "truck"]
    assert all(len(list(d.iterdir())) == 2 for d in (new / "train").iterdir())
    assert (tmp_path / "runs" / "probe" / "features.safetensors").is_file()


@pytest.mark.slow
def test_explain_smoke(tmp_path, data_cache):
    ckpt = recipe_checkpoint(tmp_path / "cifar.pt", "cifar10", ["model.width=0.125"])
    tarball = tiny_tarball(tmp_path / "tiny-cifar10.tar.gz", per_class=1)
    result = run_script("explain.py", "--checkpoint", ckpt, "--data", tarball, "--images", 6, "--shares", "0.25",
                        "--paper-images", 0, "--figure", tmp_path / "overlays.png", tmp_path=tmp_path, cache=data_cache)
    assert result["images"] == 6 and result["paper_224_seconds_per_image"] is None and result["window"] == [4, 2]
    assert set(result["deletion"]) == {"gradcam@0.25", "occlusion@0.25"}
    for row in result["deletion"].values():
        assert set(row) == {"top", "lowest", "random_squares", "random_pixels"}
        assert all(-1 <= v <= 1 for v in row.values())
    with Image.open(tmp_path / "overlays.png") as figure:
        assert figure.width > 600


@pytest.mark.slow
def test_deploy_smoke(tmp_path, data_cache):
    # the parts' own smoke tests: serve_load (serve), test_export (int8), test_bench (bench model)
    result = run_script("deploy.py", "--skip-bench", "--skip-serve", "--skip-int8", "--photos", 4, "--copies", 1,
                        "--width", 0.125, tmp_path=tmp_path, cache=data_cache)
    assert result["benchmark"] == "deploy" and result["photos"] == 4 and positive(result["predict_images_per_s"])
