"""`alexnet ablate`: arms and their overrides, the table's statistics, and a tiny end-to-end run that resumes."""

import json
import shutil

import pytest

from alexnet.cli import main
from alexnet.config import build_config, read_recipe, to_toml
from alexnet.errors import UsageError
from alexnet.paper.ablate import (
    ARMS,
    BASELINE,
    REGIMES,
    arm_overrides,
    config_differences,
    markdown,
    mean_std,
    run_one,
    select_arms,
    table_rows,
    verdict,
)
from fixtures import TARBALL, last_json

TINY = ["--seeds", "2", "--data", str(TARBALL), "--epochs", "1", "--limit", "256", "model.width=0.25",
        "data.batch_size=64", "data.eval_batch_size=256", "optim.warmup_epochs=0"]


def test_studies_select_the_baseline_and_their_arms():
    assert [a.name for a in select_arms("lrn")] == ["baseline", "lrn"]
    assert [a.name for a in select_arms("all")] == ["baseline", "lrn", "pooling", "dropout", "augment", "pca", "towers"]
    assert [a.name for a in select_arms("pca, lrn")] == ["baseline", "lrn", "pca"]
    with pytest.raises(UsageError, match="unknown study"):
        select_arms("lrn,bogus")


def test_each_arm_changes_its_switch_on_top_of_budget_and_user_overrides():
    recipe = read_recipe("cifar10")
    short = list(REGIMES["short"][0])
    budget = [*short, "optim.epochs=2", "data.limit=1000"]
    overrides = arm_overrides(ARMS["augment"], 1, budget, ["data.batch_size=64"], recipe)
    assert overrides == [*short, "optim.epochs=2", "data.limit=1000", "train.progress=false", "train.eval_every=2",
                         "data.batch_size=64", "seed=1", "data.crop_padding=0", "data.flip=false"]
    base = build_config(recipe, arm_overrides(BASELINE, 0, budget, [], recipe))
    assert (base.model.lrn, base.model.overlap_pool, base.model.towers, base.data.pca_std) == (True, True, True, 0.0)
    assert (base.model.dropout, base.optim.freeze_after, base.data.low_res_epochs) == (0.25, (), 0)
    expected = {"lrn": ("model", "lrn", False), "pooling": ("model", "overlap_pool", False),
                "dropout": ("model", "dropout", 0.0), "augment": ("data", "flip", False),
                "pca": ("data", "pca_std", 0.1), "towers": ("model", "towers", False)}
    for name, (section, key, value) in expected.items():
        config = build_config(recipe, arm_overrides(ARMS[name], 0, budget, [], recipe))
        assert getattr(getattr(config, section), key) == value != getattr(getattr(base, section), key), name
        assert config.optim.epochs == 2 and config.data.limit == 1000 and config.train.eval_every == 2
    assert build_config(recipe, arm_overrides(ARMS["towers"], 0, budget, [], recipe)).model.one_gpu
    assert "train.eval_every=2" not in arm_overrides(BASELINE, 0, budget, ["train.eval_every=1"], recipe)


def test_the_overfit_regime_trains_5000_images_30_epochs_with_the_papers_dropout():
    recipe = read_recipe("cifar10")
    regime, study = REGIMES["overfit"]
    assert [a.name for a in select_arms(study)] == ["baseline", "dropout", "augment", "pca", "pca_fb"]
    base = build_config(recipe, arm_overrides(BASELINE, 0, list(regime), [], recipe))
    assert (base.data.limit, base.data.val_limit, base.optim.epochs, base.model.dropout) == (5000, 0, 30, 0.5)
    assert base.train.eval_every == 30 and not base.optim.freeze_after and not base.data.low_res_epochs
    with_epochs = build_config(recipe, arm_overrides(BASELINE, 0, [*regime, "optim.epochs=40"], [], recipe))
    assert with_epochs.optim.epochs == 40  # --epochs after the regime wins


def test_overriding_an_arms_own_switch_is_refused():
    recipe = read_recipe("cifar10")
    with pytest.raises(UsageError, match="model.lrn"):
        arm_overrides(ARMS["lrn"], 0, [], ["model.lrn=true"], recipe)
    with pytest.raises(UsageError, match="seed"):
        arm_overrides(BASELINE, 0, [], ["seed=3"], recipe)
    arm_overrides(ARMS["lrn"], 0, [], ["model.width=0.5"], recipe)  # no arm sets the width


def test_a_finished_run_is_reused_only_with_the_same_config(tmp_path):
    config = build_config(read_recipe("cifar10"), ["optim.epochs=2"])
    path = tmp_path / "config.toml"
    assert config_differences(path, config) == ["config.toml"]  # no stored config: not reusable
    path.write_text(to_toml(config))
    assert config_differences(path, config) == []
    assert config_differences(path, build_config(read_recipe("cifar10"), ["optim.epochs=3", "seed=1"])) == [
        "optim.epochs", "seed"]
    path.write_text("\n".join(line for line in to_toml(config).splitlines() if not line.startswith("label_smoothing")))
    assert config_differences(path, config) == []  # a key the stored run did not know yet is not a difference


def test_statistics_deltas_and_verdicts_on_fixed_numbers():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)
    assert verdict(0.5, 1.0, +1) == "within noise" and verdict(-1.0, 1.0, +1) == "within noise"
    assert verdict(1.5, 1.0, +1) == "agrees" and verdict(-1.5, 1.0, +1) == "disagrees"
    assert verdict(-1.5, 1.0, -1) == "agrees"
    runs = {"baseline": [{"val_top1_err": e, "val_top5_err": 0.02, "train_top1_err": 0.4} for e in (0.30, 0.32, 0.34)],
            "lrn": [{"val_top1_err": 0.35, "val_top5_err": 0.03} for _ in range(3)],
            "pca": [{"val_top1_err": e, "val_top5_err": 0.02} for e in (0.31, 0.33, 0.35)],
            "dropout": [{"val_top1_err": 0.28, "val_top5_err": 0.02} for _ in range(3)]}
    rows = table_rows([BASELINE, ARMS["lrn"], ARMS["pca"], ARMS["dropout"]], runs)
    base, lrn, pca, dropout = rows
    assert (base["top1_mean"], base["top1_std"]) == (pytest.approx(32.0), pytest.approx(2.0))
    assert lrn["delta_top1"] == pytest.approx(3.0) and lrn["delta_top5"] == pytest.approx(1.0)
    assert lrn["noise_top1"] == pytest.approx(2 ** 0.5) and lrn["verdict"] == "agrees"
    assert pca["delta_top1"] == pytest.approx(1.0) and pca["verdict"] == "within noise"  # noise is 2
    assert dropout["delta_top1"] == pytest.approx(-4.0) and dropout["verdict"] == "disagrees"
    record = {"recipe": "cifar10", "seeds": [0, 1, 2], "rows": rows, "wall_seconds": 60, "train_seconds_total": 50,
              "budget": {"epochs": 2, "limit": 0, "val_size": 0, "batch_size": 128, "overrides": [],
                         "user_overrides": []},
              "machine": {"device": "cpu", "cpu_count": 2, "torch_version": "x"},
              "arms": {a: {"parameters": 1} for a in runs}}
    text = markdown(record, [BASELINE, ARMS["lrn"], ARMS["pca"], ARMS["dropout"]])
    row = ("| lrn | no LRN | `model.lrn=false` | 35.00 ± 0.00 | 3.00 ± 0.00 | +3.00 | +1.00 | - | - | +1.4 / +1.2 "
           "| agrees |")
    assert row in text
    assert "| - | baseline | `recipe as is` | 32.00 ± 2.00 | 2.00 ± 0.00 | - | - | 40.0 | -8.0 |" in text
    assert "**no dropout** (`model.dropout=0.0`) changes top-1 error by -4.00 points" in text
    assert "training error (40.0 %) is still above its validation error (32.0 %)" in text

    for arm in ("baseline", "dropout"):  # the overfitting regime: training error well below validation error
        runs[arm] = [{**r, "train_top1_err": 0.24 if arm == "baseline" else 0.10} for r in runs[arm]]
    overfit = markdown({**record, "rows": table_rows([BASELINE, ARMS["dropout"]], runs)}, [BASELINE, ARMS["dropout"]])
    assert "In this regime the baseline overfits: its last-epoch training error (24.0 %" in overfit
    assert "- **no dropout** widens the gap from 8.0 to 18.0 points (more overfitting) and changes test error by " \
           "-4.00 points (disagrees)." in overfit


@pytest.mark.slow
def test_tiny_ablation_writes_outputs_and_resumes(tmp_path, capsys, data_cache, monkeypatch):
    out = tmp_path / "abl"
    assert main(["ablate", "--study", "lrn", "--out", str(out), *TINY]) == 0
    result = last_json(capsys.readouterr().out)
    assert result["runs"] == 4 and result["trained"] == 4
    record = json.loads((out / "ablation.json").read_text())
    assert list(record["arms"]) == ["baseline", "lrn"]
    for arm in record["arms"].values():
        assert [r["seed"] for r in arm["runs"]] == [0, 1] and all(0 <= r["val_top1_err"] <= 1 for r in arm["runs"])
    assert record["budget"]["epochs"] == 1 and record["budget"]["limit"] == 256
    assert "| lrn | no LRN | `model.lrn=false` |" in (out / "ablation.md").read_text()
    assert (out / "ablation.png").stat().st_size > 1000
    summaries = sorted(out.glob("*/seed*/summary.json"))
    assert len(summaries) == 4
    mtimes = {p: p.stat().st_mtime_ns for p in summaries}

    stopped = out / "baseline" / "seed1"  # a run a signal stopped: its summary says so, its checkpoint continues
    summary = json.loads((stopped / "summary.json").read_text())
    (stopped / "summary.json").write_text(json.dumps({**summary, "stopped": "SIGTERM"}))
    early = out / "lrn" / "seed0"  # a run killed before its first checkpoint: trained again
    (early / "summary.json").unlink()
    shutil.rmtree(early / "checkpoints")
    assert main(["ablate", "--study", "lrn", "--out", str(out), *TINY]) == 0
    captured = capsys.readouterr()
    assert last_json(captured.out)["trained"] == 2
    assert captured.err.count("reusing the finished run") == 2
    assert "continuing the stopped run" in captured.err and "holds no checkpoint" in captured.err
    for path, mtime in mtimes.items():
        assert path in (stopped / "summary.json", early / "summary.json") or path.stat().st_mtime_ns == mtime
    assert json.loads((stopped / "summary.json").read_text())["stopped"] is None
    again = json.loads((out / "ablation.json").read_text())
    # deterministic: the retrained run gives the same numbers as the first time
    assert again["arms"]["lrn"]["runs"][0]["val_top1_err"] == record["arms"]["lrn"]["runs"][0]["val_top1_err"]
    assert again["arms"]["baseline"]["runs"][1]["val_top1_err"] == record["arms"]["baseline"]["runs"][1]["val_top1_err"]

    assert main(["ablate", "--study", "lrn", "--out", str(out), *TINY[:-1], "optim.warmup_epochs=0.5"]) == 2
    assert "another config (optim.warmup_epochs differ)" in capsys.readouterr().err


def test_a_signal_during_a_run_stops_the_ablation(tmp_path, monkeypatch):
    import alexnet.train.loop

    monkeypatch.setattr(alexnet.train.loop, "train", lambda config, out, resume=None: {"stopped": "SIGTERM"})
    config = build_config(read_recipe("cifar10"), ["optim.epochs=1"])
    with pytest.raises(SystemExit, match="stopped by SIGTERM in baseline/seed0; run the same command again"):
        run_one(config, tmp_path / "baseline" / "seed0", "baseline/seed0")


def test_a_stopped_run_with_another_config_is_refused_not_deleted(tmp_path):
    config = build_config(read_recipe("cifar10"), ["optim.epochs=1"])
    run_dir = tmp_path / "baseline" / "seed0"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    (run_dir / "config.toml").write_text(to_toml(build_config(read_recipe("cifar10"), ["optim.epochs=2"])))
    (run_dir / "summary.json").write_text('{"val_top1_err": 0.')  # cut short by a kill: not finished
    with pytest.raises(UsageError, match="holds a stopped run with another config .optim.epochs differ"):
        run_one(config, run_dir, "baseline/seed0")
    assert (run_dir / "checkpoints" / "last.pt").exists()


def test_bad_usage_exits_2(tmp_path, capsys):
    assert main(["ablate", "--study", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown study" in capsys.readouterr().err
    assert main(["ablate", "--study", "lrn", "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert main(["ablate", "--study", "lrn", "--out", str(tmp_path), "model.lrn=true"]) == 2


def test_a_run_that_took_its_class_count_from_the_data_is_reused(tmp_path):
    config = build_config(read_recipe("imagenet"), ["optim.epochs=1"])
    assert config.model.num_classes is None  # left to the data
    path = tmp_path / "config.toml"
    import dataclasses

    stored = dataclasses.replace(config, model=dataclasses.replace(config.model, num_classes=7))  # as train stores it
    assert "num_classes" not in to_toml(config) and "num_classes = 7" in to_toml(stored)
    path.write_text(to_toml(stored))
    assert config_differences(path, config) == []
    five = build_config(read_recipe("imagenet"), ["optim.epochs=1", "model.num_classes=5"])
    assert config_differences(path, five) == ["model.num_classes"]
