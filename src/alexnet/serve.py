"""`alexnet serve`: a checkpoint behind HTTP -- ``POST /predict``, ``GET /healthz``, ``GET /metrics``
and ``GET /``, a page to drop an image on.

What happens to a request, top to bottom:

1. Admission: more than ``queue`` requests held at once (reading, decoding, waiting for or in the
   network) are answered 503 with ``Retry-After`` before their body is read.
2. The body is read into memory, never to disk: a ``Content-Length`` over ``max_upload_bytes`` is
   answered 413 before any of it is read, and the bytes are counted while they stream (chunked
   uploads); a body that has not arrived within ``body_timeout_s`` is answered 408.
3. The image is a multipart/form-data field ``file`` (what a browser form sends) or a raw body with
   an ``image/*`` content type; ``topk`` and ``crops`` come from the query or the form.
4. ``predict.decode_file`` turns it into the stored uint8 image in a thread pool (off the event
   loop); images over ``max_pixels`` are refused before they are decoded (bombs). A bad file is
   answered 422 ``{"error": "<the reason>"}``.
5. One batching task takes what has arrived, up to ``max_batch`` images, waiting at most
   ``max_wait_ms`` after the first for company, and runs the network on one thread, so requests
   that arrive together share a forward pass.

The answer is ``{"top": [{"index", "wnid", "name", "prob"}, ...], "model": ..., "ms": ...}``, the
records of ``alexnet predict --json``. Every error is JSON ``{"error": "..."}`` naming the problem.
"""

from __future__ import annotations

import asyncio
import errno
import importlib.resources
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .data.decode import BadImage
from .errors import UsageError
from .predict import MAX_PIXELS, Predictor, decode_file

RAW_TYPES = ("image/", "application/octet-stream")  # content types taken as the image's own bytes
PATHS = ("/", "/predict", "/healthz", "/metrics")  # metric labels; anything else counts as "other"


@dataclass(frozen=True)
class ServeConfig:
    max_batch: int = 32  # images per forward pass at most
    max_wait_ms: float = 5.0  # how long a batch's first image waits for more to arrive
    queue: int = 64  # requests held at once; more are answered 503 with Retry-After
    max_upload_bytes: int = 32 << 20  # one request's body (32 MiB); more is answered 413
    max_pixels: int = MAX_PIXELS  # width x height of an upload before decoding; more is answered 422
    body_timeout_s: float = 30.0  # time to receive one request's body; more is answered 408
    decode_threads: int = 2  # threads decoding uploads


class Refused(Exception):
    """A request answered with ``status`` and ``{"error": message}``; ``reason`` labels the metric."""

    def __init__(self, status: int, message: str, reason: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.reason, self.headers = status, message, reason, headers


# ---------------------------------------------------------------------------------------- metrics


class Metrics:
    """The service's Prometheus metrics in a registry of its own (two apps in one process do not mix)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("alexnet_requests", "HTTP requests answered", ["path", "status"], registry=r)
        self.latency = Histogram("alexnet_request_seconds", "time from a request's arrival to its answer", ["path"],
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30), registry=r)
        self.batch = Histogram("alexnet_batch_size", "images per forward pass",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.forward = Histogram("alexnet_forward_seconds", "time of one forward pass", registry=r,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
        self.errors = Counter("alexnet_errors", "requests refused or failed, by reason", ["reason"], registry=r)
        self.held = Gauge("alexnet_requests_held", "requests being read, decoded or predicted now", registry=r)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class Measured:
    """ASGI middleware: counts every HTTP answer by path and status, and times it."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = scope["path"] if scope["path"] in PATHS else "other"
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)


# ---------------------------------------------------------------------------------------- batching


@dataclass
class Waiting:
    image: torch.Tensor  # uint8 (3, S, S)
    crops: int
    answer: asyncio.Future  # -> float (classes,) probabilities


class Batcher:
    """One task that gathers waiting images into batches and runs them on the model's one thread."""

    def __init__(self, predictor: Predictor, max_batch: int, max_wait_s: float, metrics: Metrics):
        self.predictor, self.max_batch, self.max_wait_s, self.metrics = predictor, max_batch, max_wait_s, metrics
        self.waiting: asyncio.Queue[Waiting] = asyncio.Queue()  # bounded by admission (ServeConfig.queue)
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="alexnet-model")
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        """Warm the network up (the first forward pass sets up kernels: seconds), then take requests."""
        loop = asyncio.get_running_loop()
        side = self.predictor.pipeline.stored
        blank = torch.zeros(1, 3, side, side, dtype=torch.uint8)
        await loop.run_in_executor(self.model_thread, self.predictor.probabilities, blank, 1)
        self.task = loop.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.model_thread.shutdown(wait=True)

    async def probabilities(self, image: torch.Tensor, crops: int) -> torch.Tensor:
        answer = asyncio.get_running_loop().create_future()
        self.waiting.put_nowait(Waiting(image, crops, answer))
        return await answer

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.waiting.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                if self.waiting.empty() and loop.time() >= deadline:
                    break
                try:  # Queue.get takes its item only when it returns, so a timeout loses none
                    batch.append(await asyncio.wait_for(self.waiting.get(), max(0.0, deadline - loop.time())))
                except TimeoutError:
                    break
            await self._forward(batch)

    async def _forward(self, batch: list[Waiting]) -> None:
        """One forward pass per ``crops`` value in ``batch``; each request gets its row or the error."""
        loop = asyncio.get_running_loop()
        for crops in sorted({w.crops for w in batch}):
            group = [w for w in batch if w.crops == crops and not w.answer.done()]  # done: client gone
            if not group:
                continue
            start = time.perf_counter()
            try:
                probs = await loop.run_in_executor(self.model_thread, self.predictor.probabilities,
                                                   torch.stack([w.image for w in group]), crops)
            except Exception as error:  # noqa: BLE001 - every waiting request gets it, the loop goes on
                for w in group:
                    if not w.answer.done():
                        w.answer.set_exception(error)
                continue
            self.metrics.forward.observe(time.perf_counter() - start)
            self.metrics.batch.observe(len(group))
            for w, row in zip(group, probs):
                if not w.answer.done():
                    w.answer.set_result(row)


# ---------------------------------------------------------------------------------------- requests


async def read_body(request, limit: int, timeout_s: float) -> bytes:
    """The request's body in memory: 413 past ``limit`` bytes (declared or counted), 408 past ``timeout_s``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Refused(400, f"Content-Length {declared!r} is not a number of bytes", "bad_request")
        if int(declared) > limit:
            raise Refused(413, f"upload of {int(declared):,} bytes is over the limit of {limit:,} bytes "
                          "(alexnet serve --max-upload-mb)", "too_large")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise Refused(413, f"upload is over the limit of {limit:,} bytes (alexnet serve --max-upload-mb)",
                                  "too_large")
                chunks.append(chunk)
    except TimeoutError:
        raise Refused(408, f"the upload did not arrive within {timeout_s:g} s ({size:,} bytes came)",
                      "timeout") from None
    return b"".join(chunks)


def form_parts(body: bytes, content_type: str) -> dict[str, bytes]:
    """The fields of a multipart/form-data body, parsed in memory: name -> bytes (the first of each name)."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise Refused(400, "multipart/form-data without a boundary in its Content-Type", "bad_request")
    parts, headers, field, value, data = {}, {}, [], [], []

    def header_end():
        headers[b"".join(field).lower()] = b"".join(value)
        field.clear(), value.clear()

    def part_end():
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        parts.setdefault(disposition.get(b"name", b"").decode("utf-8", "replace"), b"".join(data))
        headers.clear(), data.clear()

    parser = MultipartParser(boundary, {
        "on_header_field": lambda b, s, e: field.append(b[s:e]),
        "on_header_value": lambda b, s, e: value.append(b[s:e]),
        "on_header_end": header_end,
        "on_part_data": lambda b, s, e: data.append(b[s:e]),
        "on_part_end": part_end,
    })
    try:
        parser.write(body)
        parser.finalize()
    except Exception as error:  # noqa: BLE001 - python-multipart's parse errors
        raise Refused(400, f"malformed multipart/form-data body ({error})", "bad_request") from None
    return parts


def upload(content_type: str, body: bytes, query) -> tuple[bytes, dict[str, str]]:
    """The image's bytes and the options (query, then form fields) of a request."""
    options = dict(query)
    kind = content_type.split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        parts = form_parts(body, content_type)
        if "file" not in parts:
            named = ", ".join(repr(n) for n in parts) or "none"
            raise Refused(422, f"no form field 'file' with the image (fields sent: {named})", "bad_request")
        for name in ("topk", "crops"):
            if name in parts and name not in options:
                options[name] = parts[name].decode("utf-8", "replace")
        return parts["file"], options
    if kind.startswith(RAW_TYPES):
        return body, options
    raise Refused(415, f"Content-Type {kind or 'missing'!r} is not an upload this service reads: send the image as "
                  "multipart/form-data field 'file', or as the raw body with an image/* Content-Type", "bad_request")


def parse_options(options: dict[str, str], classes: int) -> tuple[int, int]:
    """``topk`` (1..classes, default 5) and ``crops`` (1 or 10, default 1), or 422 naming the bad one."""
    try:
        topk = int(options.get("topk", 5))
        crops = int(options.get("crops", 1))
    except ValueError:
        raise Refused(422, f"topk and crops must be whole numbers (got topk={options.get('topk')!r}, "
                      f"crops={options.get('crops')!r})", "bad_request") from None
    if topk < 1:
        raise Refused(422, f"topk must be at least 1 (got {topk})", "bad_request")
    if crops not in (1, 10):
        raise Refused(422, f"crops must be 1 (the centre) or 10 (the paper's ten patches), got {crops}", "bad_request")
    return min(topk, classes), crops


def error(status: int, message: str, headers: dict | None = None):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status, headers=headers)


class Service:
    """The state one app serves from: the network, its batcher, the decoding threads and the metrics."""

    def __init__(self, predictor: Predictor, model_name: str, config: ServeConfig):
        self.predictor, self.model_name, self.config = predictor, model_name, config
        self.metrics = Metrics()
        self.held = 0  # requests admitted and not yet answered (one event loop: no lock needed)
        self.decoders: ThreadPoolExecutor | None = None
        self.batcher: Batcher | None = None

    @asynccontextmanager
    async def lifespan(self, app):
        self.decoders = ThreadPoolExecutor(self.config.decode_threads, thread_name_prefix="alexnet-decode")
        self.batcher = Batcher(self.predictor, self.config.max_batch, self.config.max_wait_ms / 1000, self.metrics)
        await self.batcher.start()
        try:
            yield
        finally:
            await self.batcher.stop()
            self.decoders.shutdown(wait=False, cancel_futures=True)

    async def predict(self, request):
        if self.held >= self.config.queue:
            self.metrics.errors.labels("queue_full").inc()
            return error(503, f"busy: {self.held} requests are waiting (alexnet serve --queue {self.config.queue}); "
                         "retry in a second", {"Retry-After": "1"})
        self.held += 1
        self.metrics.held.inc()
        try:
            return await self._predict(request)
        except Refused as refused:
            self.metrics.errors.labels(refused.reason).inc()
            return error(refused.status, refused.message, refused.headers)
        except BadImage as bad:
            self.metrics.errors.labels("bad_image").inc()
            return error(422, f"not a usable image: {bad}")
        except Exception as failure:  # noqa: BLE001 - answered in JSON and counted, the service goes on
            self.metrics.errors.labels("internal").inc()
            print(f"alexnet serve: error: {type(failure).__name__}: {failure}", file=sys.stderr)
            return error(500, f"internal error ({type(failure).__name__}); the server's stderr has the details")
        finally:
            self.held -= 1
            self.metrics.held.dec()

    async def _predict(self, request):
        from starlette.requests import ClientDisconnect
        from starlette.responses import JSONResponse

        start = time.perf_counter()
        try:
            body = await read_body(request, self.config.max_upload_bytes, self.config.body_timeout_s)
        except ClientDisconnect:
            raise Refused(400, "the client went away before its upload arrived", "disconnected") from None
        data, options = upload(request.headers.get("content-type", ""), body, request.query_params)
        topk, crops = parse_options(options, len(self.predictor.classes))
        image = await asyncio.get_running_loop().run_in_executor(
            self.decoders, decode_file, data, self.predictor.pipeline, self.config.max_pixels)
        probs = await self.batcher.probabilities(image, crops)
        top = self.predictor.top(probs[None], topk)[0]
        return JSONResponse({"top": top, "model": self.model_name, "ms": round((time.perf_counter() - start) * 1e3, 2)})

    async def healthz(self, request):
        from starlette.responses import JSONResponse

        return JSONResponse({"status": "ok", "model": self.model_name, "classes": len(self.predictor.classes),
                             "held": self.held})

    async def metrics_text(self, request):
        from prometheus_client import CONTENT_TYPE_LATEST
        from starlette.responses import Response

        return Response(self.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    async def page(self, request):
        from starlette.responses import HTMLResponse

        return HTMLResponse(PAGE, headers={"Cache-Control": "no-cache"})


PAGE = importlib.resources.files("alexnet").joinpath("page.html").read_text(encoding="utf-8")


def build_app(predictor: Predictor, model_name: str, config: ServeConfig = ServeConfig()):
    """The ASGI app serving ``predictor`` (see the module docstring); ``app.state.service`` is its state.
    Plain Starlette (FastAPI's base): the handlers read the raw request themselves, so FastAPI's
    parameter parsing (and its UploadFile, which spools large uploads to disk) would only be in the way."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import Route

    service = Service(predictor, model_name, config)
    routes = [Route("/predict", service.predict, methods=["POST"]), Route("/healthz", service.healthz),
              Route("/metrics", service.metrics_text), Route("/", service.page)]
    app = Starlette(routes=routes, lifespan=service.lifespan, middleware=[Middleware(Measured, metrics=service.metrics)])
    app.state.service = service
    return app


def uvicorn_config(app, host: str, port: int, config: ServeConfig):
    """Uvicorn for the service: idle keep-alive connections closed after 5 s, at most ``queue`` + 32
    connections (the rest answered 503 by uvicorn), no access log."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, timeout_keep_alive=5,
                          limit_concurrency=config.queue + 32, timeout_graceful_shutdown=5)


def model_name(path: Path) -> str:
    """``<run folder>/<file>`` for a run's checkpoints/<file>, else the file's name."""
    return f"{path.parent.parent.name}/{path.name}" if path.parent.name == "checkpoints" else path.name


# ---------------------------------------------------------------------------------------- command


EXAMPLES = """examples:
  alexnet serve --checkpoint runs/demo/checkpoints/best.pt            # http://127.0.0.1:8000
  curl -F file=@cat.jpg 'http://127.0.0.1:8000/predict?topk=3'
  curl --data-binary @cat.jpg -H 'Content-Type: image/jpeg' http://127.0.0.1:8000/predict
  alexnet serve --checkpoint best.pt --host 0.0.0.0 --port 8080 --max-batch 64 --threads 8
"""


def add_parser(commands) -> None:
    import argparse

    p = commands.add_parser("serve", help="a checkpoint behind HTTP: POST /predict, a page at /", epilog=EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    d = ServeConfig()
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="0: any free port (the address line says which)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--workers", type=int, default=d.decode_threads, help="threads decoding uploads (the network "
                   f"runs on one more); default {d.decode_threads}")
    p.add_argument("--threads", type=int, help="torch threads for the network on the CPU (default: torch's)")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help=f"images per forward pass (default {d.max_batch})")
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
    p.set_defaults(run=run)


def config_from(args) -> ServeConfig:
    checks = {"--max-batch": args.max_batch >= 1, "--queue": args.queue >= 1, "--workers": args.workers >= 1,
              "--max-upload-mb": args.max_upload_mb > 0, "--max-pixels": args.max_pixels >= 1,
              "--timeout": args.timeout > 0, "--max-wait-ms": args.max_wait_ms >= 0}
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise UsageError(f"{', '.join(bad)} must be positive")
    return ServeConfig(args.max_batch, args.max_wait_ms, args.queue, int(args.max_upload_mb * 2**20), args.max_pixels,
                       args.timeout, args.workers)


def run(args) -> int:
    import uvicorn

    from .run import load_run

    config = config_from(args)
    if args.threads:
        torch.set_num_threads(args.threads)  # process-wide: the network's one thread uses this many cores
    # Batches here have any size from 1 to --max-batch: LRN runs eagerly (Predictor.from_run), since
    # compiling it for each new size would stop the service for seconds (and give up after 8).
    loaded = load_run(args.checkpoint)
    predictor = Predictor.from_run(loaded, args.device, batch_size=config.max_batch)
    name = model_name(Path(args.checkpoint))
    sock = listen(args.host, args.port)
    server = uvicorn.Server(uvicorn_config(build_app(predictor, name, config), args.host, args.port, config))
    try:
        asyncio.run(_serve(server, sock, name, len(predictor.classes)))
    except KeyboardInterrupt:
        pass
    return 0


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound here so that a taken port is a one-line error."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        hint = " (try another --port, or --port 0 for any free one)" if error.errno == errno.EADDRINUSE else ""
        raise UsageError(f"cannot listen on {host}:{port}: {error.strerror or error}{hint}") from None
    return sock


async def _serve(server, sock: socket.socket, name: str, classes: int) -> None:
    """Run ``server`` on ``sock``, printing its address on stderr once it serves."""
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    sockets = [sock for listening in server.servers for sock in listening.sockets] if server.started else []
    if sockets:  # none: stopped (a signal) as soon as it started
        host, port = sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"alexnet serve: http://{shown}:{port} (model {name}, {classes} classes)", file=sys.stderr, flush=True)
    await task
