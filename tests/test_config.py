import pytest

from alexnet.config import build_config, parse_override, read_recipe, to_dict, to_toml, valid_keys
from alexnet.errors import UsageError


def test_overrides_reach_their_dataclass_with_types():
    cfg = build_config(read_recipe("cifar10"), ["seed=3", "data.batch_size=64", "data.limit=512", "optim.epochs=2",
                                                "optim.lr=0.5", "model.lrn=false", "model.activation=tanh",
                                                "optim.lr=1"])
    assert cfg.seed == 3 and cfg.data.batch_size == 64 and cfg.data.limit == 512 and cfg.optim.epochs == 2
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)  # last one wins, int promoted to float
    assert cfg.model.lrn is False and cfg.model.activation == "tanh"


def test_unknown_key_lists_valid_keys():
    with pytest.raises(UsageError) as err:
        build_config(read_recipe("cifar10"), ["optim.learning_rate=0.1"])
    message = str(err.value)
    assert "optim.learning_rate" in message and "optim.lr" in message and "model.towers" in message
    assert "\n" not in message


def test_bad_values_are_usage_errors():
    with pytest.raises(UsageError, match="data.batch_size"):
        build_config({}, ["data.batch_size=big"])
    with pytest.raises(UsageError, match="activation"):
        build_config({}, ["model.activation=sigmoid"])
    with pytest.raises(UsageError, match="key=value"):
        parse_override("optim.lr")
    with pytest.raises(UsageError, match="unknown recipe"):
        read_recipe("no-such-recipe")


def test_paper_recipe_is_the_papers():
    cfg = build_config(read_recipe("paper"))
    assert (cfg.data.batch_size, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.lr) == (128, 0.9, 5e-4, 0.01)
    assert cfg.optim.schedule == "plateau" and cfg.optim.plateau_max_drops == 3 and cfg.optim.epochs == 90
    assert cfg.model.variant == "paper" and cfg.model.init == "paper"


def test_resolved_config_round_trips_through_toml_and_dict():
    import tomllib

    cfg = build_config(read_recipe("cifar10"), ["model.width=0.5"])
    assert build_config(to_dict(cfg)) == cfg  # as a checkpoint's stored config is read back
    assert build_config(tomllib.loads(to_toml(cfg))) == cfg
    assert "model.width" in valid_keys() and "seed" in valid_keys()


def test_overrides_may_stand_before_and_after_options():
    from alexnet.cli import parse

    args = parse(["train", "--recipe", "paper", "data.limit=10", "--out", "runs/x", "optim.epochs=1", "seed=2"])
    assert args.overrides == ["data.limit=10", "optim.epochs=1", "seed=2"] and str(args.out) == "runs/x"
    args = parse(["eval", "--checkpoint", "c.pt", "data.limit=3", "--crops", "10", "model.lrn=false"])
    assert args.overrides == ["data.limit=3", "model.lrn=false"] and args.crops == 10
