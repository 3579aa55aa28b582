"""``resnext serve`` as a user runs it: a real server process on loopback, started by the test.

Its predictions equal ``resnext predict --json`` for the same files; every bad input gets
its 4xx JSON error and the next good request still succeeds; 8 concurrent clients get only
right answers and the log shows batches of more than one image; the page works in headless
Chromium; SIGTERM answers the requests in flight before the process ends.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from helpers import tiny_checkpoint
from resnext import RuntimeOptions
from resnext.cli import main
from resnext.data import load_image
from resnext.data.digits import digits_splits
from resnext.inference import Classifier
from resnext.inference.overlay import blend

MAX_BODY_MB = 1  # the test server's limits: small, so that tests can pass them cheaply
MAX_PIXELS = 1_000_000
MAX_FILES = 4
TOL = 1e-6  # onnxruntime gives the same bits for any batch; eager CPU kernels differ ~1e-8


@dataclass
class Server:
    """A ``resnext serve`` process and where it listens."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, pattern: str, count: int = 1, since: int = 0, timeout: float = 10) -> str:
        """The log from offset ``since``, once ``pattern`` occurs ``count`` times in it (a
        request's line is written just after its answer is sent)."""
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, text := self.log()[since:])) < count:
            assert time.monotonic() < deadline, f"{pattern!r} not {count} times in the log"
            time.sleep(0.05)
        return text


def start_server(checkpoint: Path, folder: Path, *options: str, timeout: float = 60) -> Server:
    """Start ``resnext serve CHECKPOINT --port 0 OPTIONS`` and wait until /readyz says 200."""
    log_path = folder / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "resnext", "serve", str(checkpoint), "--port", "0", *options],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout
    url = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}:\n{log_path.read_text()}")
        if url is None:
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log_path.read_text())
            url = found[1] if found else None
        if url is not None:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    return Server(proc, url, log_path)
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"server not ready in {timeout} s:\n{log_path.read_text()}")


def stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` and whose data is a few bytes: what a
    decompression bomb looks like before anyone decodes it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny.pt")


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Eight test digits saved as PNG files."""
    folder = tmp_path_factory.mktemp("digits")
    _, _, test = digits_splits(0.1, 0.2, 0)
    paths = []
    for i in range(8):
        image, label = test[i]
        paths.append(folder / f"{i}_label{label}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def expected(checkpoint: Path, digits: list[Path]) -> dict[str, list[dict[str, Any]]]:
    """``resnext predict CHECKPOINT FILES --json`` (the real command), by file name."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["predict", str(checkpoint), *map(str, digits), "--json", "--no-progress"])
    assert rc == 0
    return {Path(p["path"]).name: p["topk"] for p in json.loads(out.getvalue())["predictions"]}


@pytest.fixture(scope="module")
def backend(checkpoint: Path) -> str:
    """The back-end ``auto`` picks here, for ``resnext predict`` and the server alike."""
    return Classifier.from_checkpoint(checkpoint).backend


@pytest.fixture(scope="module")
def server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(
        checkpoint,
        tmp_path_factory.mktemp("server"),
        "--max-body-mb",
        str(MAX_BODY_MB),
        "--max-pixels",
        str(MAX_PIXELS),
        "--max-files",
        str(MAX_FILES),
        "--max-wait-ms",
        "20",  # wide enough that concurrent clients meet in one batch on a busy machine
    )
    yield s
    stop(s)


def assert_same(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [(p["class"], p["name"]) for p in got] == [(p["class"], p["name"]) for p in want]
    for g, w in zip(got, want, strict=True):
        assert abs(g["probability"] - w["probability"]) <= TOL


def good_request(server: Server, digits: list[Path], expected: dict) -> None:
    r = httpx.post(
        f"{server.url}/v1/predict",
        content=digits[0].read_bytes(),
        headers={"content-type": "image/png"},
    )
    assert r.status_code == 200, r.text
    assert_same(r.json()["predictions"][0]["topk"], expected[digits[0].name])


def test_raw_body_predictions_equal_resnext_predict(server, digits, expected, backend) -> None:
    for path in digits:
        r = httpx.post(
            f"{server.url}/v1/predict?topk=5",
            content=path.read_bytes(),
            headers={"content-type": "image/png"},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "resnext29_2x4d" and body["backend"] == backend
        assert body["predictions"][0]["filename"] is None
        assert_same(body["predictions"][0]["topk"], expected[path.name])


def test_multipart_several_images_in_order_with_topk(server, digits, expected) -> None:
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in digits[:MAX_FILES]]
    r = httpx.post(f"{server.url}/v1/predict", params={"topk": 3}, files=files)
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert [p["filename"] for p in predictions] == [p.name for p in digits[:MAX_FILES]]
    for p in predictions:
        assert_same(p["topk"], expected[p["filename"]][:3])
    # topk above the class count gives every class, as `resnext predict --topk` does.
    r = httpx.post(f"{server.url}/v1/predict?topk=50", files=files[:1])
    assert len(r.json()["predictions"][0]["topk"]) == 10


def test_model_health_ready_and_page(server, backend) -> None:
    info = httpx.get(f"{server.url}/v1/model").json()
    assert info["model"] == "resnext29_2x4d" and info["file"] == "tiny.pt"
    assert info["parameters"] == 38_202 and info["num_classes"] == 10
    assert info["classes"] == info["names"] == [str(i) for i in range(10)]
    assert info["preprocess"]["image_size"] == 32 and info["backend"] == backend
    assert info["settings"]["max_pixels"] == MAX_PIXELS
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "alive"}
    assert httpx.get(f"{server.url}/readyz").json() == {"ready": True, "pending": 0}
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'type="file"' in page.text and "v1/predict" in page.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)  # nothing external


def _truncated_jpeg(digit: Path) -> bytes:
    buf = io.BytesIO()
    Image.open(digit).convert("RGB").resize((96, 96)).save(buf, "JPEG", quality=90)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


# (case, the request, status, error code, words the message holds). In the request: "body"
# (bytes or a payload name below), "ct" the content type, "topk", "files" as (field, payload
# name; None = a text field), "method".
BAD_INPUTS: list[tuple[str, dict[str, Any], int, str, str]] = [
    ("empty body", {"body": b"", "ct": "image/png"}, 400, "empty_body", "empty"),
    (
        "not an image",
        {"body": b"hello " * 50, "ct": "image/jpeg"},
        422,
        "not_an_image",
        "is not an image file",
    ),
    ("truncated JPEG", {"body": "truncated", "ct": "image/jpeg"}, 422, "bad_image", "truncated"),
    ("text/plain", {"body": "digit", "ct": "text/plain"}, 415, "unsupported_media_type", "text"),
    ("JSON", {"body": b"{}", "ct": "application/json"}, 415, "unsupported_media_type", "json"),
    ("no content type", {"body": "digit"}, 415, "unsupported_media_type", "without"),
    ("topk 0", {"body": "digit", "ct": "image/png", "topk": "0"}, 422, "bad_topk", "'0'"),
    ("topk -1", {"body": "digit", "ct": "image/png", "topk": "-1"}, 422, "bad_topk", "'-1'"),
    ("topk abc", {"body": "digit", "ct": "image/png", "topk": "abc"}, 422, "bad_topk", "'abc'"),
    ("topk 2.5", {"body": "digit", "ct": "image/png", "topk": "2.5"}, 422, "bad_topk", "'2.5'"),
    # 1,001,000 pixels: between the limit and twice it, where Pillow only warns by default.
    (
        "over the pixel limit",
        {"body": "1001x1000", "ct": "image/png"},
        413,
        "too_many_pixels",
        "over the server's limit of 1,000,000 pixels",
    ),
    ("bomb", {"body": "bomb", "ct": "image/png"}, 413, "too_many_pixels", "decompression bomb"),
    ("wrong field", {"files": [("image", "digit")]}, 422, "unexpected_field", "'image'"),
    ("text field", {"files": [("file", None)]}, 422, "not_a_file", "text"),
    ("too many files", {"files": [("file", "digit")] * (MAX_FILES + 1)}, 400, "bad_multipart", "4"),
    (
        "bomb among files",
        {"files": [("file", "digit"), ("file", "bomb")]},
        413,
        "too_many_pixels",
        "part 2",
    ),
    (
        "bad multipart",
        {"body": b"--x\r\nno", "ct": "multipart/form-data; boundary=x"},
        422,
        "no_file",
        "has no 'file' field",
    ),
    ("GET predict", {"method": "GET"}, 405, "method_not_allowed", "GET"),
]


@pytest.mark.parametrize(
    ("case", "spec", "status", "code", "words"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_gets_its_4xx_and_the_server_keeps_serving(
    server, digits, expected, case, spec, status, code, words
) -> None:
    payloads = {
        "digit": digits[0].read_bytes(),
        "truncated": _truncated_jpeg(digits[0]),
        "1001x1000": png_bytes(Image.new("L", (1001, 1000))),
        "bomb": png_header_only(30_000, 30_000),
    }
    body = spec.get("body")
    files = [
        (field, (None, b"not a file") if name is None else (f"{name}.png", payloads[name]))
        for field, name in spec.get("files", [])
    ]
    r = httpx.request(
        spec.get("method", "POST"),
        f"{server.url}/v1/predict",
        params={"topk": spec["topk"]} if "topk" in spec else None,
        content=payloads.get(body, body) if isinstance(body, str) else body,
        headers={"content-type": spec["ct"]} if "ct" in spec else None,
        files=files or None,
    )
    answer = r.json()
    assert (r.status_code, answer["error"]) == (status, code), answer
    assert words in answer["message"], answer
    assert answer["request_id"] == r.headers["x-request-id"]
    good_request(server, digits, expected)


def test_multipart_error_names_the_file(server, digits) -> None:
    files = [
        ("file", ("ok.png", digits[0].read_bytes(), "image/png")),
        ("file", ("notes.png", b"not an image", "image/png")),
    ]
    body = httpx.post(f"{server.url}/v1/predict", files=files).json()
    assert body["error"] == "not_an_image" and "'notes.png' (part 2)" in body["message"]


def _raw_http(port: int, head: bytes, chunks: list[bytes], timeout: float = 15) -> tuple[int, dict]:
    """Send a request head and body chunks on a plain socket, then read the answer. The body
    may be left unfinished: the answer must come without it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        for c in chunks:
            sock.sendall(c)
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            more = sock.recv(65536)
            if not more:
                break
            data += more
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1])


def test_body_over_the_limit_is_refused_from_its_declared_length(server) -> None:
    head = (
        b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
        + f"Content-Length: {MAX_BODY_MB * 10**6 + 1}\r\n\r\n".encode()
    )
    status, body = _raw_http(server.port, head, [])  # no body sent at all
    assert status == 413 and body["error"] == "body_too_large"
    assert f"{MAX_BODY_MB:g} MB" in body["message"]


def test_body_over_the_limit_is_refused_while_it_streams(server, digits, expected) -> None:
    head = (
        b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"\0" * 50_000
    n = MAX_BODY_MB * 10**6 // len(piece) + 1  # just past the limit, and no final chunk
    chunks = [b"%x\r\n" % len(piece) + piece + b"\r\n"] * n
    status, body = _raw_http(server.port, head, chunks)
    assert status == 413 and body["error"] == "body_too_large"
    good_request(server, digits, expected)


def test_unknown_path_is_a_json_404(server) -> None:
    r = httpx.get(f"{server.url}/v2/predict")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert "/v1/predict" in r.json()["message"]


def test_load_8_clients_x_50_requests_all_right_and_batched(server, digits, expected) -> None:
    clients, per_client = 8, 50
    failures: list[str] = []

    def client(c: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for k in range(per_client):
                path = digits[(c + k) % len(digits)]  # neighbours ask for different images
                r = http.post(
                    "/v1/predict", content=path.read_bytes(), headers={"content-type": "image/png"}
                )
                try:
                    assert r.status_code == 200, r.text
                    assert_same(r.json()["predictions"][0]["topk"], expected[path.name])
                except AssertionError as e:
                    failures.append(f"client {c} request {k} ({path.name}): {e}")

    since = len(server.log())
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    line = r"POST /v1/predict 200 [\d.]+ms batch=(\d+) "
    sizes = [int(n) for n in re.findall(line, server.wait_log(line, clients * per_client, since))]
    assert len(sizes) == clients * per_client
    assert max(sizes) > 1, "no batch of more than one image was formed"


def test_every_request_has_one_log_line(server) -> None:
    rid = "test-request-42"
    r = httpx.get(f"{server.url}/v1/model", headers={"x-request-id": rid})
    assert r.headers["x-request-id"] == rid  # a proxy's id is kept
    lines = [ln for ln in server.wait_log(f"id={rid}").splitlines() if f"id={rid}" in ln]
    assert len(lines) == 1 and re.search(r"GET /v1/model 200 [\d.]+ms batch=- id=", lines[0])
    r = httpx.get(f"{server.url}/healthz", headers={"x-request-id": "no spaces; please"})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])  # replaced, not logged raw


needs_chromium = pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)",
)


def _headless_chromium(webdriver: Any) -> Any:  # selenium is imported by each test
    """Debian's chromium under its chromedriver, headless, at a fixed window size."""
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=900,700"):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    return webdriver.Chrome(options=options, service=service)


@needs_chromium
def test_page_in_headless_chromium_shows_the_top1(server, digits, expected, tmp_path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _headless_chromium(webdriver)
    try:
        driver.get(f"{server.url}/")
        WebDriverWait(driver, 20).until(
            lambda d: "resnext29_2x4d" in d.find_element(By.ID, "model").text
        )
        driver.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(digits[3]))
        card = WebDriverWait(driver, 30).until(
            lambda d: d.find_element(By.CSS_SELECTOR, ".result:not([data-state=pending])")
        )
        assert card.get_attribute("data-state") == "done", card.text
        labels = [e.text for e in card.find_elements(By.CSS_SELECTOR, ".row .label")]
        assert labels == [p["name"] for p in expected[digits[3].name]]  # names, not ids
        assert driver.save_screenshot(str(tmp_path / "page.png"))
    finally:
        driver.quit()
    assert Image.open(tmp_path / "page.png").size[0] > 0


def test_explain_adds_each_images_map_over_it_at_its_size(server, digits, checkpoint) -> None:
    wide = Image.new("RGB", (60, 40), (200, 30, 30))  # non-square: cropped by the eval crop
    wide.paste(Image.open(digits[1]).convert("RGB"), (14, 4))
    uploads = [digits[0].read_bytes(), png_bytes(wide)]
    files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(uploads)]
    r = httpx.post(f"{server.url}/v1/predict", params={"explain": "1", "topk": 2}, files=files)
    assert r.status_code == 200, r.text
    eager = Classifier.from_checkpoint(checkpoint, runtime=RuntimeOptions(backend="eager"))
    pictures = [load_image(digits[0]), wide]
    answers, explained = r.json()["predictions"], eager.explain(pictures, topk=10)
    for p, picture, e in zip(answers, pictures, explained, strict=True):
        explanation = p["explanation"]
        assert explanation["class"] == p["topk"][0]["class"]  # the answer's top-1 is explained
        overlay = Image.open(io.BytesIO(base64.b64decode(explanation["overlay_png"])))
        assert overlay.format == "PNG" and overlay.size == picture.size
        # the eager fp32 map of that class, blended over the picture
        want = blend(e.image, e.maps[e.classes.index(explanation["class"])])
        np.testing.assert_array_equal(np.asarray(overlay.convert("RGB")), want)
    plain = httpx.post(f"{server.url}/v1/predict", params={"explain": "0"}, files=files[:1])
    assert "explanation" not in plain.json()["predictions"][0]
    bad = httpx.post(f"{server.url}/v1/predict?explain=maybe", files=files[:1])
    assert bad.status_code == 422 and bad.json()["error"] == "bad_explain"
    assert httpx.get(f"{server.url}/v1/model").json()["explain"] is True


@needs_chromium
def test_page_toggle_lays_the_map_over_each_image(server, digits, tmp_path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _headless_chromium(webdriver)

    def overlays_shown(d: Any) -> list[bool]:
        return [
            o.is_displayed() and d.execute_script("return arguments[0].naturalWidth", o) == 32
            for o in d.find_elements(By.CSS_SELECTOR, ".result .overlay")
        ]

    try:
        driver.get(f"{server.url}/")
        WebDriverWait(driver, 20).until(
            lambda d: "resnext29_2x4d" in d.find_element(By.ID, "model").text
        )
        upload = driver.find_element(By.CSS_SELECTOR, "input[type=file]")
        upload.send_keys(str(digits[1]))  # the toggle off: no map
        WebDriverWait(driver, 30).until(
            lambda d: d.find_element(By.CSS_SELECTOR, ".result[data-state=done]")
        )
        assert overlays_shown(driver) == [False]
        driver.find_element(By.ID, "explain").click()  # on: the card's map is fetched
        WebDriverWait(driver, 30).until(lambda d: overlays_shown(d) == [True])
        upload.send_keys(str(digits[2]))  # on: the map comes with the answer
        WebDriverWait(driver, 30).until(lambda d: overlays_shown(d) == [True, True])
        assert driver.save_screenshot(str(tmp_path / "explain.png"))
        driver.find_element(By.ID, "explain").click()  # off: the photos alone again
        WebDriverWait(driver, 10).until(lambda d: overlays_shown(d) == [False, False])
        photos = driver.find_elements(By.CSS_SELECTOR, ".result .photo")
        assert [p.is_displayed() for p in photos] == [True, True]
    finally:
        driver.quit()
    assert Image.open(tmp_path / "explain.png").size[0] > 0


def test_sigterm_answers_the_requests_in_flight(checkpoint, digits, expected, tmp_path) -> None:
    # A long batching wait holds the requests inside the server when SIGTERM arrives.
    s = start_server(checkpoint, tmp_path, "--backend", "eager", "--max-wait-ms", "1500")
    try:
        answers: list[httpx.Response] = []

        def ask(path: Path) -> None:
            answers.append(
                httpx.post(
                    f"{s.url}/v1/predict",
                    content=path.read_bytes(),
                    headers={"content-type": "image/png"},
                    timeout=60,
                )
            )

        threads = [threading.Thread(target=ask, args=(p,)) for p in digits[:3]]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while httpx.get(f"{s.url}/readyz").json()["pending"] < 3:  # all three are inside
            assert time.monotonic() < deadline, "the requests never reached the server"
            time.sleep(0.02)
        s.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join()
        assert s.proc.wait(timeout=30) == -signal.SIGTERM  # uvicorn re-raises the signal
    finally:
        stop(s)
    assert [r.status_code for r in answers] == [200] * 3
    assert sorted(r.json()["predictions"][0]["topk"][0]["class"] for r in answers) == sorted(
        expected[p.name][0]["class"] for p in digits[:3]
    )
    assert "batch=3" in s.log() and "Finished server process" in s.log()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{s.url}/healthz")


def test_cli_errors_exit_2_before_listening(checkpoint, tmp_path, capsys, monkeypatch) -> None:
    assert main(["serve", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert main(["serve", str(checkpoint), "--workers", "0"]) == 2
    assert main(["serve", str(checkpoint), "--max-batch", "0"]) == 2
    assert "max_batch must be at least 1" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc = main(["serve", str(checkpoint), "--backend", "eager", "--port", str(port)])
    assert rc == 2 and f"cannot listen on 127.0.0.1 port {port}" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the serve extra were missing
    assert main(["serve", str(checkpoint)]) == 2
    assert "pip install 'resnext[serve]'" in capsys.readouterr().err


@pytest.mark.slow
def test_two_worker_processes_both_serve(checkpoint, digits, expected, tmp_path) -> None:
    s = start_server(checkpoint, tmp_path, "--workers", "2")
    try:
        deadline = time.monotonic() + 60  # /readyz answered for one worker; wait for both
        while s.log().count("ready: warmed up") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        for path in digits:
            r = httpx.post(
                f"{s.url}/v1/predict",
                content=path.read_bytes(),
                headers={"content-type": "image/png"},
            )
            assert_same(r.json()["predictions"][0]["topk"], expected[path.name])
        pids = set(re.findall(r"Started server process \[(\d+)\]", s.log()))
        assert len(pids) == 2
    finally:
        stop(s)
