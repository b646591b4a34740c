"""``alexnet eval``: top-1/top-5 error of a checkpoint (or an ensemble) on its dataset's validation split."""

from __future__ import annotations

import json
from pathlib import Path

from ..data import views
from ..errors import UsageError
from .common import add_parser as _parser
from .common import add_precision, add_views

EXAMPLES = """examples:
  alexnet eval --checkpoint runs/demo/checkpoints/best.pt
  alexnet eval --checkpoint runs/demo/checkpoints/last.pt --data ../shared/data/cifar10-jpeg.tar.gz data.limit=1000
  alexnet eval --checkpoint runs/demo/checkpoints/last.pt --crops 10          # the paper's ten patches
  alexnet eval --checkpoint runs/a/checkpoints/best.pt --ensemble runs/b/checkpoints/best.pt

Prints one JSON line: val_top1_err, val_top5_err, val_loss, examples, top_class_share, crops, models.
"""


def add_parser(commands) -> None:
    p = _parser(commands, "eval", "top-1/top-5 error of a checkpoint", EXAMPLES)
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--data", help="dataset location (default: the one in the checkpoint's config)")
    add_views(p, None, "default: the run's train.eval_crops")
    p.add_argument("--ensemble", nargs="+", type=Path, default=[], metavar="CKPT",
                   help="more checkpoints whose softmax is averaged with --checkpoint's (the paper's '5 CNNs')")
    add_precision(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.limit=1000")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..data.datasets import load_dataset
    from ..runs.load import load_run
    from ..runtime import shutdown_distributed, start
    from ..use.evaluate import evaluate_views
    from ..use.inference import choose, fast, ready

    if Path(args.checkpoint).suffix == ".onnx":
        return run_onnx(args)
    first = load_run(args.checkpoint, args.overrides, args.data)
    members = [load_run(path) for path in args.ensemble]  # a bad file fails before the data is read
    config = first.config
    ddp, device = start(config.seed, config.train.threads, config.train.device)  # torchrun: a share each
    data = load_dataset(config.data, config.seed, ddp, splits=("val",))  # a folder of val/ photos alone will do
    pipeline = first.pipeline_for(data)
    for member in members:  # the same classes and the same input as the first network
        member.same_input(pipeline, data)
    count = args.crops or config.train.eval_crops
    if why := views.refusal(pipeline.kind, count):
        raise UsageError(f"--crops {count} for {args.checkpoint}: {why}")
    pipeline = pipeline.to(device)
    work = len(data.val_labels) * count if config.train.compile_lrn else 0  # train.compile_lrn=false: eager
    settings = choose(device, work, args.precision)  # as predict and serve run
    models = [fast(ready(loaded.model, device, settings), settings, copy=False) for loaded in (first, *members)]
    result = evaluate_views(models, data.val_images, data.val_labels, device=device, views=count,
                            batch_size=config.data.eval_batch_size, inputs=lambda x: pipeline.eval_inputs(x, count),
                            precision=settings.precision, ddp=ddp)
    if ddp.main:
        print(json.dumps({**result, "crops": count, "models": len(models), "checkpoint": str(args.checkpoint)}))
    shutdown_distributed()
    return 0


def run_onnx(args) -> int:
    """``alexnet eval`` of an exported ``.onnx`` file: its classes and preprocessing, onnxruntime on the CPU,
    the dataset its preprocessing names (``--data`` for an ImageNet-style one)."""
    from ..data.datasets import load_dataset
    from ..runtime import Dist
    from ..use.evaluate import evaluate_views
    from ..use.export import read_info
    from ..use.onnx_model import check_classes, onnx_config
    from ..use.predictor import Predictor

    if args.ensemble:
        raise UsageError("--ensemble takes checkpoints (.pt); evaluate an exported .onnx file on its own")
    info = read_info(args.checkpoint)  # once: the metadata parse reads the whole file
    config = onnx_config(info, args.overrides, args.data)
    # the dataset first: decoding it may fork a pool of processes, which a process already running
    # onnxruntime's threads should not do (a forked child can inherit a lock held by one of them)
    data = load_dataset(config.data, config.seed, Dist(), splits=("val",))
    predictor = Predictor.from_onnx(args.checkpoint, info=info)
    count = args.crops or info.get("eval_crops") or 1  # as the run was validated, where the
    if not args.crops and predictor.refusal(count):  # file can take it (one input side): else whole images
        count = 2 if predictor.refusal(2) is None else 1
    if why := predictor.refusal(count):
        raise UsageError(f"--crops {count} for {args.checkpoint}: {why}")
    check_classes(args.checkpoint, predictor.classes, data.classes)
    result = evaluate_views([predictor.net], data.val_images, data.val_labels, device=predictor.device, views=count,
                            batch_size=config.data.eval_batch_size,
                            inputs=lambda x: predictor.pipeline.eval_inputs(x, count))
    print(json.dumps({**result, "crops": count, "models": 1, "checkpoint": str(args.checkpoint)}))
    return 0
