"""The serve pieces in-process: the batcher's gathering, the app's readiness, its 500s and
its pixel limit, with the app in uvicorn on a thread of the test
(``e2e/test_serve_process.py`` runs the real command in its own process)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn
from PIL import Image
from torch import nn

from helpers import tiny_checkpoint
from resnext import RuntimeOptions
from resnext.cli import main
from resnext.inference import Classifier
from resnext.serve import ServeSettings, create_app
from resnext.serve.batching import Batcher, BatcherClosed, Overloaded
from resnext.serve.limits import RequestError, decode_image
from resnext.serve.server import bind


def double(batch: torch.Tensor) -> torch.Tensor:
    """A stand-in model: each row's result is its own input, doubled."""
    return batch * 2


def test_concurrent_submits_share_batches_and_get_their_own_rows() -> None:
    calls: list[int] = []

    def run(batch: torch.Tensor) -> torch.Tensor:
        calls.append(len(batch))
        return double(batch)

    async def scenario() -> list[list]:
        batcher = Batcher(run, max_batch=4, max_wait_s=0.5, max_queue=100)
        await batcher.start()
        try:
            inputs = [torch.full((2,), float(i)) for i in range(10)]
            return await asyncio.gather(*(batcher.submit([x]) for x in inputs))
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert calls == [4, 4, 2]  # full batches first; the rest goes when the wait ends
    for i, [r] in enumerate(results):
        assert torch.equal(r.probabilities, torch.full((2,), 2.0 * i))
    assert [r.batch_size for [r] in results] == [4] * 8 + [2] * 2


def test_a_lone_image_waits_at_most_max_wait() -> None:
    async def scenario() -> tuple[int, float]:
        batcher = Batcher(double, max_batch=16, max_wait_s=0.05, max_queue=100)
        await batcher.start()
        start = time.perf_counter()
        [r] = await batcher.submit([torch.ones(3)])
        waited = time.perf_counter() - start
        await batcher.stop()
        return r.batch_size, waited

    size, waited = asyncio.run(scenario())
    assert size == 1 and waited >= 0.05  # it waited for company, then ran alone
    # ... and no longer than max_wait plus scheduling slack (it did not wait for a full batch,
    # nor for a further request that never came).
    assert waited < 0.05 + 1.0, waited


def test_the_wait_follows_max_wait_both_ways() -> None:
    """A lone request goes when max_wait_s is up: a longer wait lasts longer, within bounds."""

    async def lone(max_wait_s: float) -> float:
        batcher = Batcher(double, max_batch=16, max_wait_s=max_wait_s, max_queue=100)
        await batcher.start()
        try:
            start = time.perf_counter()
            await batcher.submit([torch.ones(3)])
            return time.perf_counter() - start
        finally:
            await batcher.stop()

    for max_wait_s in (0.0, 0.3):
        waited = asyncio.run(lone(max_wait_s))
        assert max_wait_s <= waited < max_wait_s + 1.0, (max_wait_s, waited)


def test_a_model_error_reaches_every_request_of_the_batch() -> None:
    def broken(batch: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("model exploded")

    async def scenario() -> list:
        batcher = Batcher(broken, max_batch=8, max_wait_s=0.05, max_queue=100)
        await batcher.start()
        out = await asyncio.gather(
            *(batcher.submit([torch.ones(1)]) for _ in range(3)), return_exceptions=True
        )
        await batcher.stop()
        return out

    out = asyncio.run(scenario())
    assert all(isinstance(e, RuntimeError) and "exploded" in str(e) for e in out)


def test_a_full_queue_refuses_and_stop_answers_everyone_left() -> None:
    release = threading.Event()

    def slow(batch: torch.Tensor) -> torch.Tensor:
        release.wait(10)
        return double(batch)

    async def scenario() -> tuple[BaseException | None, list, int]:
        batcher = Batcher(slow, max_batch=1, max_wait_s=0, max_queue=3)
        await batcher.start()
        # One image in the (blocked) model and two queued: the limit of 3 is reached.
        submits = [asyncio.ensure_future(batcher.submit([torch.ones(1)])) for _ in range(3)]
        await asyncio.sleep(0.05)
        refused = None
        try:
            await batcher.submit([torch.ones(1)])
        except Overloaded as e:
            refused = e
        release.set()
        await batcher.stop()  # before the queued two were run
        answers = await asyncio.gather(*submits, return_exceptions=True)
        return refused, answers, batcher.pending

    refused, answers, pending = asyncio.run(scenario())
    assert isinstance(refused, Overloaded) and "3 images are already waiting" in str(refused)
    assert isinstance(answers[0], list) and answers[0][0].batch_size == 1
    assert [type(a) for a in answers[1:]] == [BatcherClosed, BatcherClosed]  # none hangs
    assert pending == 0


def test_decode_image_checks_the_pixel_limit_itself() -> None:
    # Pillow's own limit is its default in this process (limit_pillow_pixels not called).
    buf = io.BytesIO()
    Image.new("RGB", (200, 100)).save(buf, "PNG")
    with pytest.raises(RequestError) as err:
        decode_image(buf.getvalue(), max_pixels=19_999, name="x.png")
    assert err.value.status == 413 and "200x100 = 20,000 pixels" in err.value.message
    assert decode_image(buf.getvalue(), max_pixels=20_000, name="x.png").size == (200, 100)


class Gate(nn.Module):
    """Wraps a model: blocks until ``open`` is set, and raises on a batch of 7s."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.open = threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.open.wait(10)
        if (x == 7).all():
            raise RuntimeError("a bug in the model")
        return self.model(x)


@pytest.fixture
def gated(tmp_path: Path) -> tuple[Classifier, Gate]:
    clf = Classifier.from_checkpoint(
        tiny_checkpoint(tmp_path / "c.pt"), runtime=RuntimeOptions(backend="eager")
    )
    gate = Gate(clf.runner)
    clf.runner = gate
    return clf, gate


@contextlib.contextmanager
def running(app) -> Iterator[httpx.Client]:
    """The app in uvicorn on a thread, on a free loopback port; a client for it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}") as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def wait_ready(client: httpx.Client) -> None:
    for _ in range(200):
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError("not ready")


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (32, 32), 90).save(buf, "PNG")
    return buf.getvalue()


def test_not_ready_until_warmed_up(gated) -> None:
    clf, gate = gated
    with running(create_app(clf, ServeSettings())) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json() == {
            "ready": False,
            "reason": "warming up",
            "pending": 0,
        }
        assert client.get("/healthz").status_code == 200  # alive all the same
        r = client.post("/v1/predict", content=png(), headers={"content-type": "image/png"})
        assert r.status_code == 503 and r.json()["error"] == "not_ready"
        gate.open.set()
        wait_ready(client)
        r = client.post("/v1/predict", content=png(), headers={"content-type": "image/png"})
        assert r.status_code == 200


def test_an_internal_error_is_a_500_whose_request_id_is_in_the_log(
    gated, caplog, monkeypatch
) -> None:
    clf, gate = gated
    gate.open.set()
    # Preprocessing that yields all 7s: the gate's "bug" fires inside the batch.
    monkeypatch.setattr(clf, "to_tensor", lambda image: torch.full((3, 32, 32), 7.0))
    caplog.set_level(logging.INFO, logger="resnext.serve")
    with running(create_app(clf, ServeSettings())) as client:
        wait_ready(client)
        r = client.post("/v1/predict", content=png(), headers={"content-type": "image/png"})
        assert r.status_code == 500
        body = r.json()
        rid = body["request_id"]
        assert body["error"] == "internal_error" and rid in body["message"]
        assert r.headers["x-request-id"] == rid
        failed = [rec for rec in caplog.records if rec.exc_info and rid in rec.getMessage()]
        assert len(failed) == 1 and "a bug in the model" in str(failed[0].exc_info[1])
        assert any("POST /v1/predict 500 " in m and f"id={rid}" in m for m in caplog.messages)
        monkeypatch.undo()  # the server keeps serving
        r = client.post("/v1/predict", content=png(), headers={"content-type": "image/png"})
        assert r.status_code == 200


def test_a_failed_warm_up_keeps_readyz_503_with_the_reason(tmp_path: Path) -> None:
    clf = Classifier.from_checkpoint(
        tiny_checkpoint(tmp_path / "c.pt"), runtime=RuntimeOptions(backend="eager")
    )

    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("out of memory")

    clf.runner = broken  # type: ignore[assignment]
    with running(create_app(clf, ServeSettings())) as client:
        for _ in range(200):
            reason = client.get("/readyz").json()["reason"]
            if reason != "warming up":
                break
            time.sleep(0.02)
        assert reason == "warm-up failed: RuntimeError: out of memory"


def test_connections_on_the_bound_socket_have_nagle_off() -> None:
    """asyncio sets TCP_NODELAY only on sockets whose proto says TCP; without it each
    keep-alive answer waits ~40 ms for the client's delayed ACK."""
    listener = bind("127.0.0.1", 0)

    async def scenario() -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=listener)
        _, writer = await asyncio.open_connection(*listener.getsockname())
        nodelay = await accepted
        writer.close()
        server.close()
        await server.wait_closed()
        return nodelay

    assert asyncio.run(scenario()) != 0


def test_an_exported_onnx_file_serves_like_its_checkpoint(tmp_path: Path) -> None:
    checkpoint = Classifier.from_checkpoint(tiny_checkpoint(tmp_path / "c.pt"))
    if checkpoint.backend != "onnxruntime":
        pytest.skip("onnxruntime is not installed (the export extra)")
    # The onnxruntime back-end's cached file is a `resnext export` ONNX file.
    exported = Classifier.from_checkpoint(checkpoint.runner.path)
    answers = []
    for clf in (checkpoint, exported):
        with running(create_app(clf, ServeSettings(), source=str(tmp_path / "m"))) as client:
            wait_ready(client)
            info = client.get("/v1/model").json()
            r = client.post("/v1/predict", content=png(), headers={"content-type": "image/png"})
            answers.append((info["model"], info["parameters"], info["classes"], r.json()))
            # maps need the PyTorch model: the checkpoint has one, the .onnx file none
            assert info["explain"] is (clf is checkpoint)
            r = client.post(
                "/v1/predict?explain=1", content=png(), headers={"content-type": "image/png"}
            )
            if clf is checkpoint:
                assert (
                    r.status_code == 200
                    and "overlay_png" in r.json()["predictions"][0]["explanation"]
                )
            else:
                assert r.status_code == 422 and r.json()["error"] == "explain_unavailable"
                assert "exported .onnx file" in r.json()["message"]
    assert answers[0] == answers[1]
    assert answers[0][1] == 38_202
    # Both of those ran the same cached ONNX file; the eager model is the independent check.
    eager = Classifier.from_checkpoint(tmp_path / "c.pt", runtime=RuntimeOptions(backend="eager"))
    with running(create_app(eager, ServeSettings(), source=str(tmp_path / "m"))) as client:
        wait_ready(client)
        info = client.get("/v1/model").json()
        r = client.post("/v1/predict", content=png(), headers={"content-type": "image/png"})
        want = (info["model"], info["parameters"], info["classes"], r.json())
    assert want[:3] == answers[0][:3]
    assert (answers[0][3]["backend"], want[3]["backend"]) == ("onnxruntime", "eager")
    assert _top(answers[0][3]) == _top(want[3]), (answers[0][3], want[3])
    got_p, want_p = _probabilities(answers[0][3]), _probabilities(want[3])
    assert got_p.keys() == want_p.keys()
    assert all(abs(got_p[k] - want_p[k]) < 1e-4 for k in want_p), (got_p, want_p)


def _top(answer: dict) -> list:
    return [p["class"] for p in answer["predictions"][0]["topk"]]


def _probabilities(answer: dict) -> dict:
    return {p["class"]: p["probability"] for p in answer["predictions"][0]["topk"]}


def test_wordnet_classes_answer_their_id_and_name_as_resnext_predict_does(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A model trained on ImageNet-style folders: "class" is the WordNet id, "name" what
    people read, equal to `resnext predict --json`; /v1/model lists both."""
    wnids = ["n01443537", "n02124075", "n03126707"]
    ckpt = tiny_checkpoint(tmp_path / "c.pt", num_classes=3, classes=wnids)
    (tmp_path / "x.png").write_bytes(png())
    argv = ["predict", str(ckpt), str(tmp_path / "x.png"), "--json", "--backend", "eager"]
    assert main([*argv, "--no-progress"]) == 0
    want = json.loads(capsys.readouterr().out)["predictions"][0]["topk"]
    assert {p["class"] for p in want} == set(wnids)
    clf = Classifier.from_checkpoint(ckpt, runtime=RuntimeOptions(backend="eager"))
    with running(create_app(clf, ServeSettings(), source=str(ckpt))) as client:
        wait_ready(client)
        info = client.get("/v1/model").json()
        assert info["classes"] == wnids
        assert info["names"] == ["goldfish, Carassius auratus", "Egyptian cat", "crane"]
        r = client.post("/v1/predict", content=png(), headers={"content-type": "image/png"})
    got = r.json()["predictions"][0]["topk"]
    assert [(p["class"], p["name"]) for p in got] == [(p["class"], p["name"]) for p in want]
    for g, w in zip(got, want, strict=True):
        assert abs(g["probability"] - w["probability"]) <= 1e-5
