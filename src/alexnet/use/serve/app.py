"""The HTTP service of ``alexnet serve``: a checkpoint behind HTTP -- ``POST /predict``, ``POST /explain``,
``GET /healthz``, ``GET /metrics`` and ``GET /``, a page to drop an image on.

What happens to a request, top to bottom:

1. Admission: more than ``queue`` requests held at once (reading, decoding, waiting for or in the
   network) are answered 503 with ``Retry-After`` before their body is read.
2. The body is read into memory, never to disk: a ``Content-Length`` over ``max_upload_bytes`` is
   answered 413 before any of it is read, and the bytes are counted while they stream (chunked
   uploads); a body that has not arrived within ``body_timeout_s`` is answered 408.
3. The image is a multipart/form-data field ``file`` (what a browser form sends) or a raw body with
   an ``image/*`` content type; ``topk`` and ``crops`` come from the query or the form.
4. ``data.images.decode_file`` turns it into the stored uint8 image in a thread pool (off the event
   loop); images over ``max_pixels`` are refused before they are decoded (bombs). A bad file is
   answered 422 ``{"error": "<the reason>"}``.
5. One batching task takes what has arrived, up to ``max_batch`` images, waiting at most
   ``max_wait_ms`` after the first for company, and runs the network on one thread, so requests
   that arrive together share a forward pass.

The answer is ``{"top": [{"index", "wnid", "name", "prob"}, ...], "model": ..., "ms": ...}``, the
records of ``alexnet predict --json``. ``POST /explain`` takes the same uploads under the same limits
(options ``method``: gradcam or occlusion, ``class``: an index, wnid or name) and answers ``{"class":
{"index", "wnid", "name", "prob"}, "method", "overlay": "data:image/png;base64,...", "model", "ms"}``: the
photo with ``alexnet explain``'s map over it, computed on the model's thread between batches. Every
error is JSON ``{"error": "..."}`` naming the problem.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.resources
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from ...data.decode import BadImage
from ...data.images import MAX_PIXELS, decode_file, decode_photo
from ...errors import UsageError
from ...runs.folder import RunFolder
from ..explain import Explainer
from ..predictor import Predictor
from .batcher import Batcher
from .metrics import Measured, Metrics
from .uploads import Refused, explain_options, parse_options, read_body, upload


@dataclass(frozen=True)
class ServeConfig:
    max_batch: int = 32  # images per forward pass at most
    max_wait_ms: float = 5.0  # how long a batch's first image waits for more to arrive
    queue: int = 64  # requests held at once; more are answered 503 with Retry-After
    max_upload_bytes: int = 32 << 20  # one request's body (32 MiB); more is answered 413
    max_pixels: int = MAX_PIXELS  # width x height of an upload before decoding; more is answered 422
    body_timeout_s: float = 30.0  # time to receive one request's body; more is answered 408
    decode_threads: int = 2  # threads decoding uploads
    head_timeout_s: float = 10.0  # time to send a whole request head; a slower connection is closed (guard.py)
    max_connections: int = 1000  # open connections at most, idle ones included; more are closed at once


OVERLAY_SIDE = 640  # the longer side of /explain's overlay at most: a page's picture, not the photo's pixels


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
        # heat maps need the network's layers: none for an exported .onnx file
        self.explainer = (Explainer(predictor.model, predictor.pipeline, predictor.device,
                                    batch_size=predictor.batch_size) if hasattr(predictor.model, "taps") else None)
        self.occluding = False  # an occlusion map is being made: one at a time (seconds of the network each)

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
        return await self._admitted(request, self._predict)

    async def explain(self, request):
        return await self._admitted(request, self._explain)

    async def _admitted(self, request, answer):
        """``answer(request)`` within the admission limit, every failure answered in JSON and counted."""
        if self.held >= self.config.queue:
            self.metrics.errors.labels("queue_full").inc()
            return error(503, f"busy: {self.held} requests are waiting (alexnet serve --queue {self.config.queue}); "
                         "retry in a second", {"Retry-After": "1"})
        self.held += 1
        self.metrics.held.inc()
        try:
            return await answer(request)
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

    async def _upload(self, request) -> tuple[bytes, dict[str, str]]:
        from starlette.requests import ClientDisconnect

        try:
            body = await read_body(request, self.config.max_upload_bytes, self.config.body_timeout_s)
        except ClientDisconnect:
            raise Refused(400, "the client went away before its upload arrived", "disconnected") from None
        return upload(request.headers.get("content-type", ""), body, request.query_params)

    async def _predict(self, request):
        from starlette.responses import JSONResponse

        start = time.perf_counter()
        data, options = await self._upload(request)
        topk, crops = parse_options(options, len(self.predictor.classes), self.predictor.pipeline.kind)
        image = await asyncio.get_running_loop().run_in_executor(
            self.decoders, decode_file, data, self.predictor.pipeline, self.config.max_pixels)
        probs = await self.batcher.probabilities(image, crops)
        top = self.predictor.top(probs[None], topk)[0]
        return JSONResponse({"top": top, "model": self.model_name, "ms": round((time.perf_counter() - start) * 1e3, 2)})

    async def _explain(self, request):
        """``POST /explain``: the class (top, or ``class``) and an overlay PNG of where the network finds it. The
        class and probability are /predict's (the same stored image, the same batches); the photo is decoded
        at most at OVERLAY_SIDE, so a large upload costs no more memory than a small one."""
        import base64

        from starlette.responses import JSONResponse

        from ..explain import class_map

        start = time.perf_counter()
        if self.explainer is None:
            raise Refused(501, "heat maps need the network's layers: serve a checkpoint (.pt), not an exported .onnx",
                          "bad_request")
        data, options = await self._upload(request)
        method, target = explain_options(options, self.predictor.classes)
        if method == "occlusion" and self.occluding:
            raise Refused(503, "busy: an occlusion map (seconds of the network) is being made; retry, or ask "
                          "method=gradcam", "queue_full", {"Retry-After": "2"})
        loop = asyncio.get_running_loop()
        image = await loop.run_in_executor(self.decoders, decode_file, data, self.predictor.pipeline,
                                           self.config.max_pixels)
        probs = await self.batcher.probabilities(image, 1)
        k = int(probs.argmax()) if target is None else target
        self.occluding = method == "occlusion"
        try:
            window_map = await self.batcher.on_model_thread(class_map, self.explainer, image, k, method)
        finally:
            self.occluding = False
        found = self.predictor.record(k, probs[k])
        drawn = await loop.run_in_executor(self.decoders, self._overlay, data, window_map, found)
        return JSONResponse({"class": found, "method": method, "model": self.model_name,
                             "overlay": "data:image/png;base64," + base64.b64encode(drawn).decode("ascii"),
                             "ms": round((time.perf_counter() - start) * 1e3, 2)})

    def _overlay(self, data: bytes, window_map, found: dict) -> bytes:
        """The upload at most OVERLAY_SIDE pixels on its longer side with the map over it, as PNG bytes."""
        from ..explain import on_photo
        from ..overlay import overlay, png_bytes

        photo = decode_photo(data, self.config.max_pixels, draft=OVERLAY_SIDE)
        height, width = photo.shape[1:]
        scale = min(1.0, OVERLAY_SIDE / max(height, width))  # the map at the overlay's size, not the photo's
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        heat = on_photo(window_map, self.predictor.pipeline, *size)
        return png_bytes(overlay(photo, heat, f"{found['name']} {found['prob']:.3f}", max_side=OVERLAY_SIDE))

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


PAGE = importlib.resources.files("alexnet.use.serve").joinpath("page.html").read_text(encoding="utf-8")


def build_app(predictor: Predictor, model_name: str, config: ServeConfig = ServeConfig()):
    """The ASGI app serving ``predictor`` (see the module docstring); ``app.state.service`` is its state.
    Plain Starlette (FastAPI's base): the handlers read the raw request themselves, so FastAPI's
    parameter parsing (and its UploadFile, which spools large uploads to disk) would only be in the way."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import Route

    service = Service(predictor, model_name, config)
    routes = [Route("/predict", service.predict, methods=["POST"]),
              Route("/explain", service.explain, methods=["POST"]), Route("/healthz", service.healthz),
              Route("/metrics", service.metrics_text), Route("/", service.page)]
    middleware = [Middleware(Measured, metrics=service.metrics)]
    app = Starlette(routes=routes, lifespan=service.lifespan, middleware=middleware)
    app.state.service = service
    return app


def uvicorn_config(app, host: str, port: int, config: ServeConfig):
    """Uvicorn for the service: HTTP/1.1 by h11 with a deadline for each request head and a cap on open
    connections that takes no request's place (``guard.py``), idle keep-alive connections closed after
    5 s, no access log."""
    import uvicorn

    from .guard import guarded_protocol

    http = guarded_protocol(config.head_timeout_s, config.max_connections)
    return uvicorn.Config(app, host=host, port=port, http=http, log_level="warning", access_log=False,
                          timeout_keep_alive=5, timeout_graceful_shutdown=5)


def model_name(path: Path) -> str:
    """``<run folder>/<file>`` for a run's checkpoints/<file>, else the file's name."""
    folder = RunFolder.of_checkpoint(path)
    return f"{folder.path.name}/{path.name}" if folder else path.name


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


def serve(predictor: Predictor, name: str, host: str, port: int, config: ServeConfig = ServeConfig()) -> None:
    """Serve ``predictor`` on ``host``:``port`` until a signal (Ctrl-C, SIGTERM) ends it."""
    import uvicorn

    sock = listen(host, port)
    server = uvicorn.Server(uvicorn_config(build_app(predictor, name, config), host, port, config))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(server, sock, name, len(predictor.classes)))
