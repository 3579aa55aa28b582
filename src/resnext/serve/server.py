"""Running the app in uvicorn: the listening socket, logging, worker processes, shutdown.

One worker (the default) serves the classifier the command already loaded. ``workers > 1``
starts that many uvicorn worker processes on one shared socket, each loading its own copy
of the model (described by :class:`ModelSpec`, passed through the environment) and running
its own batcher, with the CPU threads split between them.

On SIGTERM (or Ctrl-C) uvicorn stops accepting connections, answers the requests in flight
(for up to :data:`GRACEFUL_SHUTDOWN_S`), then the app stops its batcher.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import socket
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import uvicorn

from ..errors import ConfigError
from ..inference import Classifier
from ..runtime import RuntimeOptions
from .app import create_app
from .limits import ASGIApp, limit_pillow_pixels
from .settings import ServeSettings

log = logging.getLogger("resnext.serve")

GRACEFUL_SHUTDOWN_S = 30  # how long in-flight requests may take to finish after SIGTERM
_WORKER_ENV = "RESNEXT_SERVE_WORKER"  # the JSON a worker process builds its app from


@dataclass(frozen=True)
class ModelSpec:
    """What to load and how: the ``Classifier.from_checkpoint`` arguments."""

    path: str  # a checkpoint, model file (.safetensors) or exported .onnx
    use_ema: bool | None = None  # None = the weights the training run selected
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)  # device, precision, back-end

    def load(self) -> Classifier:
        return Classifier.from_checkpoint(self.path, use_ema=self.use_ema, runtime=self.runtime)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        """The spec of ``dataclasses.asdict(spec)`` (how a worker process receives it)."""
        return cls(**{**d, "runtime": RuntimeOptions(**d.get("runtime", {}))})


def log_config(level: str = "info") -> dict[str, Any]:
    """``logging.config`` for uvicorn's and our loggers: one plain line per record on
    stderr. uvicorn's own access log is off: the app logs each request itself."""
    handler = {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"stderr": handler},
        "loggers": {
            name: {"handlers": ["stderr"], "level": level.upper(), "propagate": False}
            for name in ("uvicorn", "resnext")
        },
    }


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (port 0 = any free port), or a ConfigError saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
    # sockets whose proto says TCP; with proto 0 every keep-alive answer waited ~40 ms for
    # the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host} port {port}: {e.strerror or e}") from None
    return sock


def run_server(
    spec: ModelSpec,
    settings: ServeSettings,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    classifier: Classifier | None = None,
) -> None:
    """Serve ``spec`` until SIGTERM/SIGINT. With one worker, ``classifier`` (``spec``
    already loaded, if given) is served; more workers each load ``spec`` themselves."""
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    sock = bind(host, port)  # a port in use is a one-line error, before any worker starts
    port = sock.getsockname()[1]
    logging.config.dictConfig(log_config())
    uvicorn_options: dict[str, Any] = {
        "log_config": log_config(),  # worker processes configure their logging from it
        "access_log": False,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
        "lifespan": "on",
    }
    shown = f"[{host}]" if ":" in host else host
    listening = f"listening on http://{shown}:{port} with {workers} worker(s); GET /readyz "
    listening += "answers 200 once warmed up"
    if workers == 1:
        app = create_app(classifier or spec.load(), settings, source=spec.path)
        limit_pillow_pixels(settings.max_pixels)
        log.info(listening)
        uvicorn.Server(uvicorn.Config(app, **uvicorn_options)).run(sockets=[sock])
        return
    os.environ[_WORKER_ENV] = json.dumps(
        {
            "spec": asdict(spec),
            "settings": asdict(settings),
            # Each worker gets its share of the cores (onnxruntime takes torch's count).
            "threads": max(1, torch.get_num_threads() // workers),
        }
    )
    # uvicorn's public entry point binds the port itself (its supervisor's API changes
    # between versions): hand the checked port over.
    sock.close()
    log.info(listening)
    uvicorn.run(
        f"{__name__}:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        **uvicorn_options,
    )


def app_from_environment() -> ASGIApp:
    """A worker process's app (``workers > 1``): its own model copy, from the JSON that
    :func:`run_server` put in the environment."""
    worker = json.loads(os.environ[_WORKER_ENV])
    torch.set_num_threads(worker["threads"])
    settings = ServeSettings(**worker["settings"])
    limit_pillow_pixels(settings.max_pixels)
    spec = ModelSpec.from_dict(worker["spec"])
    return create_app(spec.load(), settings, source=spec.path)
