"""What a request to ``POST /predict`` carries: its body read with limits, the image's bytes (a
multipart field ``file`` or a raw ``image/*`` body) and the options, or a ``Refused`` naming why not."""

from __future__ import annotations

import asyncio

from ...data import views

RAW_TYPES = ("image/", "application/octet-stream")  # content types taken as the image's own bytes


class Refused(Exception):
    """A request answered with ``status`` and ``{"error": message}``; ``reason`` labels the metric."""

    def __init__(self, status: int, message: str, reason: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.reason, self.headers = status, message, reason, headers


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
        for name in ("topk", "crops", "method", "class"):
            if name in parts and name not in options:
                options[name] = parts[name].decode("utf-8", "replace")
        return parts["file"], options
    if kind.startswith(RAW_TYPES):
        return body, options
    raise Refused(415, f"Content-Type {kind or 'missing'!r} is not an upload this service reads: send the image as "
                  "multipart/form-data field 'file', or as the raw body with an image/* Content-Type", "bad_request")


def parse_options(options: dict[str, str], classes: int, kind: str) -> tuple[int, int]:
    """``topk`` (1..classes, default 5) and ``crops`` (views per image, ``data/views.py``, default 1) for a
    network whose pipeline is of ``kind``, or 422 naming the bad one."""
    try:
        topk = int(options.get("topk", 5))
        crops = int(options.get("crops", 1))
    except ValueError:
        raise Refused(422, f"topk and crops must be whole numbers (got topk={options.get('topk')!r}, "
                      f"crops={options.get('crops')!r})", "bad_request") from None
    if topk < 1:
        raise Refused(422, f"topk must be at least 1 (got {topk})", "bad_request")
    if why := views.refusal(kind, crops):
        raise Refused(422, f"crops={crops}: {why}", "bad_request")
    return min(topk, classes), crops


def explain_options(options: dict[str, str], classes: list[dict]) -> tuple[str, int | None]:
    """``method`` (gradcam, the default, or occlusion) and ``class`` (a wnid, name or index,
    ``use.explain.find_class``; default the top class) of ``POST /explain``, or 422 naming the bad one."""
    from ..explain import METHODS, find_class

    method = options.get("method", "gradcam")
    if method not in METHODS:
        raise Refused(422, f"method={method!r} is not one of {', '.join(METHODS)}", "bad_request")
    given = options.get("class")
    if given is None or given == "":
        return method, None
    try:
        return method, find_class(given, classes)
    except ValueError as err:
        raise Refused(422, f"class={given}: {err}", "bad_request") from None
