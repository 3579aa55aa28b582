"""Load on ``resnext serve``: latency and throughput under concurrent clients, one image per
request, with dynamic batching off (``--max-batch 1``) and on (``--max-batch 16``).

For each max-batch value it starts ``resnext serve CHECKPOINT --port 0`` on loopback, waits
for ``/readyz``, sends a few untimed requests, then runs each ``--clients`` count: that many
concurrent clients, each sending ``--requests`` PNG images (the digits test split, or
``--images DIR``) one after the other. The table gives errors, p50/p99 latency, requests per
second and the batch sizes the server's log shows for the timed requests; the last line is
the throughput of the largest max-batch over max-batch 1. ``--url`` measures a server that
is already running instead (its batch sizes are then not known here).

    python benchmarks/serve_load.py runs/demo/best.pt
    python benchmarks/serve_load.py --model resnext50_32x4d --clients 8 32 --requests 12
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --clients 8 --requests 100

``--model NAME`` serves a registry model with random weights (timing only: its answers mean
nothing), with its family's usual preprocessing, e.g. 224x224 crops for ResNeXt-50.

Client and server share this machine's cores: the numbers are the whole system's.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
from PIL import Image

from resnext.benchmarking import cpu_name
from resnext.checkpoint import make_checkpoint, save_checkpoint
from resnext.data import Preprocess
from resnext.data.digits import digits_splits
from resnext.data.images import is_image_file
from resnext.inference import default_class_names
from resnext.models import create_model, default_input_size
from resnext.table import format_table

_BATCH = re.compile(r"POST /v1/predict 200 [\d.]+ms batch=([\d,]+) ")


@dataclass
class Run:
    """One timed load: what was asked and what came back."""

    clients: int
    requests: int  # sent in all
    errors: int  # answers other than 200
    latencies: list[float]  # seconds, of every request
    seconds: float  # wall time of the whole load

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: int) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1]


def digit_pngs() -> list[bytes]:
    """The digits test split (359 images, 32x32) as PNG bytes."""
    _, _, test = digits_splits(0.1, 0.2, 0)
    out = []
    for i in range(len(test)):
        buf = io.BytesIO()
        Image.fromarray(test[i][0].permute(1, 2, 0).numpy()).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def random_checkpoint(name: str, folder: Path) -> str:
    """A checkpoint of registry model ``name`` with random weights (for timing only)."""
    torch.manual_seed(0)
    model = create_model(name)
    path = folder / f"{name}-random.pt"
    payload = make_checkpoint(
        model,
        classes=default_class_names(model.arch.num_classes),
        preprocess=Preprocess.for_input_size(default_input_size(name)).to_dict(),
    )
    save_checkpoint(path, payload)
    return str(path)


def folder_images(folder: Path) -> list[bytes]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p.name))
    if not files:
        raise SystemExit(f"no image files under {folder}")
    return [p.read_bytes() for p in files]


async def load(url: str, images: list[bytes], clients: int, per_client: int) -> Run:
    """``clients`` concurrent clients, each sending ``per_client`` requests in turn."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:

        async def client(c: int) -> None:
            nonlocal errors
            for k in range(per_client):
                body = images[(c * per_client + k) % len(images)]
                start = time.perf_counter()
                r = await http.post(
                    "/v1/predict", content=body, headers={"content-type": "image/png"}
                )
                latencies.append(time.perf_counter() - start)
                errors += r.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        seconds = time.perf_counter() - start
    return Run(clients, clients * per_client, errors, latencies, seconds)


class ServerProcess:
    """``resnext serve`` in a child process, its log in a temporary file."""

    def __init__(self, checkpoint: str, options: list[str]) -> None:
        self.log_file = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "resnext", "serve", checkpoint, "--port", "0", *options],
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )
        self.url = self._wait_ready()

    def log(self) -> str:
        return Path(self.log_file.name).read_text()

    def _wait_ready(self, timeout: float = 300) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"resnext serve exited {self.proc.returncode}:\n{self.log()}")
            found = re.search(r"listening on (http://\S+?:\d+)", self.log())
            if found:
                try:
                    if httpx.get(f"{found[1]}/readyz", timeout=5).status_code == 200:
                        return found[1]
                except httpx.TransportError:
                    pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"resnext serve was not ready within {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log_file.close()
        os.unlink(self.log_file.name)


def batch_sizes(log_text: str) -> list[int]:
    """The batch size of each answered image, from the server's per-request log lines."""
    return [int(n) for m in _BATCH.finditer(log_text) for n in m[1].split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", default="runs/demo/best.pt")
    parser.add_argument("--model", help="serve this registry model with random weights instead")
    parser.add_argument("--url", help="measure this running server instead of starting one")
    parser.add_argument("--max-batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--requests", type=int, default=50, help="requests per client")
    parser.add_argument("--images", type=Path, help="a folder of images (default: digits)")
    args = parser.parse_args()

    images = folder_images(args.images) if args.images else digit_pngs()
    scratch = tempfile.TemporaryDirectory()
    checkpoint = (
        random_checkpoint(args.model, Path(scratch.name)) if args.model else args.checkpoint
    )
    served = args.url or (f"{args.model} (random weights)" if args.model else checkpoint)
    print(f"{cpu_name()}, {os.cpu_count()} CPUs; client and server on this machine")
    print(f"serving {served}, back-end {args.backend}; {len(images)} distinct images")
    rows: list[list[object]] = [
        [
            "max-batch",
            "clients",
            "requests",
            "errors",
            "p50 ms",
            "p99 ms",
            "req/s",
            "batch mean",
            "batch max",
        ]
    ]
    throughput: dict[tuple[int, int], float] = {}  # (max-batch, clients) -> req/s
    settings = [None] if args.url else args.max_batch
    for max_batch in settings:
        server = None
        if args.url:
            url = args.url
        else:
            options = ["--max-batch", str(max_batch), "--max-wait-ms", f"{args.max_wait_ms:g}"]
            server = ServerProcess(checkpoint, [*options, "--backend", args.backend])
            url = server.url
        try:
            asyncio.run(load(url, images, 4, 5))  # untimed: connections, first calls
            for clients in args.clients:
                before = len(server.log()) if server else 0
                run = asyncio.run(load(url, images, clients, args.requests))
                sizes = batch_sizes(server.log()[before:]) if server else []
                rows.append(
                    [
                        max_batch if max_batch is not None else "?",
                        clients,
                        run.requests,
                        run.errors,
                        f"{1000 * run.percentile(50):.1f}",
                        f"{1000 * run.percentile(99):.1f}",
                        f"{run.throughput:.1f}",
                        f"{statistics.fmean(sizes):.2f}" if sizes else "-",
                        max(sizes) if sizes else "-",
                    ]
                )
                if max_batch is not None:
                    throughput[max_batch, clients] = run.throughput
        finally:
            if server:
                server.stop()
    scratch.cleanup()
    print(format_table(rows, left=0))
    top = max(args.max_batch)
    if not args.url and 1 in args.max_batch and top > 1:
        gains = ", ".join(
            f"{throughput[top, c] / throughput[1, c]:.2f}x with {c} clients" for c in args.clients
        )
        print(f"throughput of max-batch {top} over max-batch 1: {gains}")


if __name__ == "__main__":
    main()
