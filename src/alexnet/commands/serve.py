"""``alexnet serve``: a checkpoint behind HTTP (``POST /predict``, a page at ``/``)."""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import UsageError
from ..runtime import MAX_THREADS
from ..use.serve.app import ServeConfig
from .common import add_parser as _parser
from .common import add_precision, at_least

EXAMPLES = """examples:
  alexnet serve --checkpoint runs/demo/checkpoints/best.pt            # http://127.0.0.1:8000
  curl -F file=@cat.jpg 'http://127.0.0.1:8000/predict?topk=3'
  curl --data-binary @cat.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:8000/predict
  alexnet serve --checkpoint best.pt --host 0.0.0.0 --port 8080 --max-batch 64 --threads 8
"""


def add_parser(commands) -> None:
    p = _parser(commands, "serve", "a checkpoint behind HTTP: POST /predict, a page at /", EXAMPLES)
    d = ServeConfig()
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="0: any free port (the address line says which)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    add_precision(p)
    p.add_argument("--workers", type=int, default=d.decode_threads, help="threads decoding uploads (the network "
                   f"runs on one more); default {d.decode_threads}")
    p.add_argument("--threads", type=int, help="torch threads for the network on the CPU (default: torch's)")
    p.add_argument("--max-batch", type=int, default=d.max_batch,
                   help=f"images per forward pass (default {d.max_batch})")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help=f"how long a batch waits for more images (default {d.max_wait_ms:g})")
    p.add_argument("--queue", type=int, default=d.queue, help=f"requests held at once, more are answered 503 "
                   f"(default {d.queue})")
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_bytes / 2**20,
                   help="largest request body in MiB, more is answered 413 (default 32)")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels,
                   help=f"largest image in pixels, checked before decoding (default {d.max_pixels:,})")
    p.add_argument("--timeout", type=float, default=d.body_timeout_s,
                   help=f"seconds to receive one upload, more is answered 408 (default {d.body_timeout_s:g})")
    p.add_argument("--head-timeout", type=float, default=d.head_timeout_s,
                   help=f"seconds a client has to send a whole request head, else its connection is closed "
                        f"(slow clients; default {d.head_timeout_s:g})")
    p.add_argument("--max-connections", type=int, default=d.max_connections,
                   help=f"open connections at most, idle ones included; more are closed (default {d.max_connections})")
    p.set_defaults(run=run)


def config_from(args) -> ServeConfig:
    checks = {"--max-batch": args.max_batch >= 1, "--queue": args.queue >= 1, "--workers": args.workers >= 1,
              "--max-upload-mb": args.max_upload_mb > 0, "--max-pixels": args.max_pixels >= 1,
              "--timeout": args.timeout > 0, "--max-wait-ms": args.max_wait_ms >= 0,
              "--head-timeout": args.head_timeout > 0, "--max-connections": args.max_connections >= 1}
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise UsageError(f"{', '.join(bad)} must be positive")
    seconds = {"--max-upload-mb": args.max_upload_mb, "--timeout": args.timeout, "--max-wait-ms": args.max_wait_ms,
               "--head-timeout": args.head_timeout}  # a socket or a wait takes no infinite time
    if endless := [f"{name} {value}" for name, value in seconds.items() if not math.isfinite(value)]:
        raise UsageError(f"{endless[0]}: must be a finite number; e.g. {endless[0].split()[0]} 30")
    return ServeConfig(args.max_batch, args.max_wait_ms, args.queue, int(args.max_upload_mb * 2**20), args.max_pixels,
                       args.timeout, args.workers, args.head_timeout, args.max_connections)


def run(args) -> int:
    import torch

    from ..runtime import log
    from ..use.predictor import load_predictor
    from ..use.serve.app import model_name, serve

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: a TCP port is 0..65535 (0: any free one); e.g. --port 8000")
    at_least(threads=(args.threads, 1, MAX_THREADS))
    config = config_from(args)
    if args.threads:
        torch.set_num_threads(args.threads)  # the command's process: the network's one thread uses this many cores
    predictor = load_predictor(args.checkpoint, args.device, config.max_batch, None, args.precision)  # or an .onnx
    if predictor.settings.lrn == "compiled":  # before the first request, not during it
        log("serve: compiling the LRN for the first batches (a few seconds, once)")
        predictor.warm_up()
    serve(predictor, model_name(Path(args.checkpoint)), args.host, args.port, config)
    return 0
