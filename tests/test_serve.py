"""`alexnet serve` over real HTTP on a loopback port: photos and every awkward file kind, the limits
(413 before the body is read, 408 for a stuck upload, bombs, a full queue's 503), batching, the
metrics, the command line, and the page as headless Chromium renders it."""

import concurrent.futures
import functools
import io
import json
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from alexnet.data.images import decode_file
from alexnet.runs.load import load_run
from alexnet.use.predictor import Predictor
from alexnet.use.serve.app import ServeConfig, build_app, uvicorn_config
from fixtures import SAMPLES, encoded, exif_rotated_jpeg, headless, tiny_checkpoint

pytestmark = pytest.mark.slow  # end to end: servers, a browser

CLASSES = [{"index": i, "wnid": f"n{i:08d}", "name": f"thing {i}"} for i in range(10)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small network (10 classes, quarter width) with the paper's pipeline: stored 256, crops 224."""
    return tiny_checkpoint(tmp_path_factory.mktemp("serve") / "small.pt", mean=120.0, classes=CLASSES, init="paper")


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return Predictor.from_run(load_run(checkpoint), "cpu", batch_size=32)  # eager LRN, as `alexnet serve` runs it


class Running:
    """An app under uvicorn in a thread on a free loopback port."""

    def __init__(self, app, config: ServeConfig):
        self.server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", 0, config))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def server(predictor):
    running = Running(build_app(predictor, "small.pt", ServeConfig(max_wait_ms=100)), ServeConfig())
    yield running
    running.stop()


def forward_passes(url) -> float:
    metrics = httpx.get(f"{url}/metrics").text
    return float(re.search(r"^alexnet_batch_size_count (\S+)", metrics, re.M).group(1))


def post(url, data: bytes, name="photo.JPEG", **params) -> httpx.Response:
    return httpx.post(f"{url}/predict", files={"file": (name, data, "image/jpeg")}, params=params, timeout=60)


def photo(i: int = 0) -> bytes:
    return sorted(SAMPLES.glob("*.JPEG"))[i].read_bytes()


def test_photos_get_the_predict_records_batched(server, predictor):
    photos = [photo(i) for i in range(8)]
    before = forward_passes(server.url)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda data: post(server.url, data), photos))
    for data, answer in zip(photos, answers):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"] == "small.pt" and body["ms"] > 0 and len(body["top"]) == 5
        expected = predictor.top(predictor.probabilities(decode_file(data, predictor.pipeline)[None]), 5)[0]
        assert [t["index"] for t in body["top"]] == [t["index"] for t in expected]
        for got, want in zip(body["top"], expected):
            assert got.keys() == {"index", "wnid", "name", "prob"} and got["name"] == CLASSES[got["index"]]["name"]
            assert got["prob"] == pytest.approx(want["prob"], abs=1e-4)
    assert forward_passes(server.url) - before < 8  # eight requests arriving together share passes


def test_raw_body_query_and_form_options(server):
    data = photo(1)
    raw = httpx.post(f"{server.url}/predict?topk=3&crops=10", content=data, headers={"Content-Type": "image/jpeg"})
    assert raw.status_code == 200 and len(raw.json()["top"]) == 3
    form = httpx.post(f"{server.url}/predict", files={"file": ("a.jpg", data)}, data={"topk": "2"})
    assert form.status_code == 200 and len(form.json()["top"]) == 2
    assert len(post(server.url, data, topk=50).json()["top"]) == 10  # at most every class
    for params, word in [({"crops": 3}, "crops"), ({"topk": 0}, "topk"), ({"topk": "many"}, "topk")]:
        answer = post(server.url, data, **params)
        assert answer.status_code == 422 and word in answer.json()["error"]
    text = httpx.post(f"{server.url}/predict", content=b"hello", headers={"Content-Type": "text/plain"})
    assert text.status_code == 415 and "image/*" in text.json()["error"]
    no_file = httpx.post(f"{server.url}/predict", files={"picture": ("a.jpg", data)})
    assert no_file.status_code == 422 and "'file'" in no_file.json()["error"]


def png_bomb(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with a few bytes of data: a decompression bomb's shape."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@functools.cache
def awkward_files() -> dict[str, tuple[bytes, int, str]]:
    """name -> (bytes, expected status, a word the error must contain)."""
    rgb = Image.open(io.BytesIO(photo(2))).convert("RGB")
    real = photo(3)
    return {
        "cmyk": (encoded(rgb.convert("CMYK"), "JPEG"), 200, ""),
        "grayscale": (encoded(rgb.convert("L"), "JPEG"), 200, ""),
        "png named .JPEG": (encoded(rgb, "PNG"), 200, ""),
        "rgba": (encoded(rgb.convert("RGBA"), "PNG"), 200, ""),
        "palette gif": (encoded(rgb.convert("P"), "GIF"), 200, ""),
        "exif rotated": (exif_rotated_jpeg(rgb), 200, ""),
        "tiny": (encoded(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), 200, ""),
        "truncated": (real[: len(real) // 3], 422, "truncated"),
        "empty": (b"", 422, "empty"),
        "text": (b"name,label\ncat,1\n" * 20, 422, "text"),
        "corrupt header": (real[:2] + bytes(range(40, 140)) + real[102:], 422, "image"),
        "pixel bomb": (png_bomb(100_000, 100_000), 422, "bomb"),
    }


@pytest.mark.parametrize("kind", list(awkward_files()))
def test_awkward_files(server, kind):
    data, status, word = awkward_files()[kind]
    answer = post(server.url, data, name="upload.JPEG")
    assert answer.status_code == status, (kind, answer.text)
    if status == 200:
        assert len(answer.json()["top"]) == 5
    else:
        assert word in answer.json()["error"], (kind, answer.json())


def test_full_queue_answers_503_with_retry_after_and_recovers(predictor):
    class Slow:  # the network takes a second per batch
        def __getattr__(self, name):
            return getattr(predictor, name)

        def probabilities(self, images, crops=1):
            time.sleep(1.0)
            return predictor.probabilities(images, crops)

    config = ServeConfig(queue=1, max_wait_ms=0)
    running = Running(build_app(Slow(), "slow.pt", config), config)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(post, running.url, photo(4))
            deadline = time.monotonic() + 30
            while httpx.get(f"{running.url}/healthz").json()["held"] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            busy = post(running.url, photo(5))
            assert busy.status_code == 503 and busy.headers["Retry-After"] == "1" and "busy" in busy.json()["error"]
            assert first.result().status_code == 200
        assert post(running.url, photo(5)).status_code == 200
        health = httpx.get(f"{running.url}/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok", "model": "slow.pt", "classes": 10,
                                                              "held": 0}
        metrics = httpx.get(f"{running.url}/metrics").text
        assert 'alexnet_requests_total{path="/predict",status="503"} 1.0' in metrics
        assert 'alexnet_errors_total{reason="queue_full"} 1.0' in metrics
    finally:
        running.stop()


# ------------------------------------------------------------------ the command line and the upload limits


@pytest.fixture(scope="module")
def cli_server(checkpoint):
    """`alexnet serve` itself, with a 1 MiB upload limit and a 1 s body timeout."""
    command = [sys.executable, "-m", "alexnet.cli", "serve", "--checkpoint", str(checkpoint), "--port", "0",
               "--max-upload-mb", "1", "--timeout", "1", "--threads", "1", "--workers", "1"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    match = re.match(r"alexnet serve: (http://127\.0\.0\.1:(\d+)) \(model small\.pt, 10 classes\)$", line.strip())
    assert match, f"unexpected first stderr line {line!r}"
    yield match.group(1), int(match.group(2))
    proc.terminate()
    assert proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn shuts down, then re-raises the signal it caught


def raw_exchange(port: int, head: str, chunks=(), wait_s: float = 10) -> tuple[int, dict, bytes]:
    """Send ``head`` then ``chunks`` until the server answers; the answer's status, headers and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(head.encode())
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # answered already: stop sending
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        answer = b""
        try:
            while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 4 + content_length(answer):
                part = sock.recv(65536)
                if not part:
                    break
                answer += part
        except ConnectionResetError:
            pass
    top, _, body = answer.partition(b"\r\n\r\n")
    lines = top.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def content_length(answer: bytes) -> int:
    found = re.search(rb"content-length: *(\d+)", answer, re.I)
    return int(found.group(1)) if found else 0


def test_declared_oversized_upload_is_refused_before_the_body(cli_server):
    url, port = cli_server
    head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {40 << 20}\r\n\r\n")
    status, _, body = raw_exchange(port, head)  # not one byte of the body sent
    assert status == 413 and "over the limit of 1,048,576 bytes" in json.loads(body)["error"]
    assert 'alexnet_errors_total{reason="too_large"}' in httpx.get(f"{url}/metrics").text


def test_streamed_oversized_upload_is_refused_while_counting(cli_server):
    url, port = cli_server
    head = "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"10000\r\n" + b"\xff" * 0x10000 + b"\r\n"  # 64 KiB a chunk, no Content-Length
    status, _, body = raw_exchange(port, head, [chunk] * 64)  # up to 4 MiB
    assert status == 413 and "over the limit" in json.loads(body)["error"]


def test_stuck_upload_times_out(cli_server):
    url, port = cli_server
    head = "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 5000\r\n\r\n"
    start = time.monotonic()
    status, _, body = raw_exchange(port, head, [b"\xff\xd8" * 10])
    assert status == 408 and "did not arrive within 1 s" in json.loads(body)["error"]
    assert time.monotonic() - start < 5
    assert httpx.post(f"{url}/predict", files={"file": ("a.jpg", photo(6))}).status_code == 200  # still serving
    assert 'alexnet_errors_total{reason="timeout"} 1.0' in httpx.get(f"{url}/metrics").text


# ------------------------------------------------------------------ the page


def test_page_is_one_self_contained_file(server):
    answer = httpx.get(server.url + "/")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    page = answer.text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page) and "<link" not in page
    assert "@import" not in page and "<script src" not in page


def test_chromium_shows_five_bars_for_a_chosen_image(server, tmp_path):
    # ?demo makes the page draw a picture and hand it to the same choose(file) as the file field
    dom = headless(tmp_path, "--virtual-time-budget=20000", "--dump-dom", f"{server.url}/?demo",
                   window="900,700").stdout
    assert 'data-state="done"' in dom, dom[-2000:]
    names = re.findall(r'<span class="name"[^>]*>([^<]*)</span>', dom)
    assert len(names) == 5 and all(n.startswith("thing ") for n in names)
    assert len(re.findall(r'class="fill" style="width: [\d.]+%', dom)) == 5
    shot = tmp_path / "shot.png"
    headless(tmp_path, "--virtual-time-budget=20000", f"--screenshot={shot}", f"{server.url}/?demo", window="900,700")
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    assert len(np.unique(pixels, axis=0)) > 100 and pixels.std() > 20  # text, picture and bars, not blank
    bars = (np.abs(pixels - (0x25, 0x63, 0xEB)).max(1) < 8).sum()  # the blue of the four lower bars
    assert bars > 500, "no bars in the screenshot"


def test_explain_answers_the_class_and_an_overlay_under_the_same_limits(server, predictor):
    import base64

    data = photo(2)
    answer = httpx.post(f"{server.url}/explain", files={"file": ("p.jpg", data)}, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = predictor.top(predictor.probabilities(decode_file(data, predictor.pipeline)[None]), 1)[0][0]
    assert body["class"]["index"] == expected["index"] and body["method"] == "gradcam" and body["ms"] > 0
    assert body["overlay"].startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(body["overlay"].split(",", 1)[1]))) as drawn, \
            Image.open(io.BytesIO(data)) as original:
        assert max(drawn.size) == min(640, max(original.size))
        assert abs(drawn.size[0] / drawn.size[1] - original.size[0] / original.size[1]) < 0.02
    chosen = httpx.post(f"{server.url}/explain?class=thing 7&method=occlusion", content=data,
                        headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert chosen.status_code == 200 and chosen.json()["class"]["index"] == 7, chosen.text
    for params, word in [({"method": "lime"}, "method"), ({"class": "zebra"}, "class")]:
        refused = httpx.post(f"{server.url}/explain", files={"file": ("p.jpg", data)}, params=params)
        assert refused.status_code == 422 and word in refused.json()["error"]
    broken = httpx.post(f"{server.url}/explain", files={"file": ("p.jpg", data[:3000])})
    assert broken.status_code == 422 and "truncated" in broken.json()["error"]
    assert httpx.get(f"{server.url}/healthz").json()["status"] == "ok"


@pytest.fixture
def kaiming_server(tmp_path):
    """A server whose network has He-initialised weights: its Grad-CAM maps are not flat (the paper's small
    initial weights give conv5 maps that are its biases' constant)."""
    path = tiny_checkpoint(tmp_path / "kaiming.pt", mean=120.0, classes=CLASSES)
    running = Running(build_app(Predictor.from_run(load_run(path), "cpu"), "kaiming.pt"), ServeConfig())
    yield running
    running.stop()


def test_chromium_shows_where_it_looks_when_switched_on(kaiming_server, tmp_path):
    server = kaiming_server
    dom = headless(tmp_path, "--virtual-time-budget=30000", "--dump-dom", f"{server.url}/?demo&look",
                   window="900,700").stdout
    assert 'data-look="shown"' in dom and 'src="data:image/png;base64,' in dom, dom[-2000:]
    shots = {}
    for name, query in (("plain", "?demo"), ("look", "?demo&look")):
        shots[name] = tmp_path / f"{name}.png"
        headless(tmp_path, "--virtual-time-budget=30000", f"--screenshot={shots[name]}", f"{server.url}/{query}",
                 window="900,700")
    with Image.open(shots["plain"]) as plain, Image.open(shots["look"]) as look:
        before, after = (np.asarray(i.convert("RGB")).astype(int) for i in (plain, look))
    assert len(np.unique(after.reshape(-1, 3), axis=0)) > 100 and after.std() > 20  # not blank
    changed = np.abs(after - before).max(axis=2) > 15  # the map's colours over the 256x256 picture, its text
    assert changed.sum() > 40_000, changed.sum()


def test_slow_clients_trickling_headers_cannot_lock_others_out_and_are_dropped(predictor):
    """Slowloris: 150 connections each send a request head a byte at a time, a byte a second. Meanwhile
    /healthz and a photo's /predict answer within 5 s; each slow connection is closed by the server once
    its head is later than the deadline (3 s here, 10 s by default), long before 60 s."""
    config = ServeConfig(max_wait_ms=5, queue=8, head_timeout_s=3.0)
    running = Running(build_app(predictor, "small.pt", config), config)
    slow = []
    try:
        for _ in range(150):
            s = socket.create_connection(("127.0.0.1", running.port), timeout=10)
            s.sendall(b"GET /healthz HTTP/1.1\r\n")
            slow.append(s)
        start = time.monotonic()
        for _ in range(2):  # trickle: the connections stay busy, not idle
            for s in slow:
                s.sendall(b"X")
            time.sleep(1)
            assert httpx.get(f"{running.url}/healthz", timeout=5).status_code == 200
            answer = post(running.url, photo(0), topk=1)
            assert answer.status_code == 200 and len(answer.json()["top"]) == 1, answer.text
        closed = 0
        for s in slow:
            s.settimeout(max(0.1, 15 - (time.monotonic() - start)))
            try:
                closed += s.recv(1024) == b""  # the server closed it without an answer
            except ConnectionResetError:
                closed += 1
        assert closed == len(slow) and time.monotonic() - start < 20, (closed, time.monotonic() - start)
        full = httpx.get(f"{running.url}/healthz", timeout=5)  # and it still serves
        assert full.status_code == 200 and full.json()["status"] == "ok"
    finally:
        for s in slow:
            s.close()
        running.stop()
