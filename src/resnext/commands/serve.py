"""``resnext serve``: a checkpoint or exported model behind an HTTP API and a page.

Loads the model once (errors exit 2 before anything listens), then serves with uvicorn
until SIGTERM or Ctrl-C; see :mod:`resnext.serve`.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError
from ..serve.settings import ServeSettings
from .common import add_ema_options, add_runtime_options, runtime_from_args

_DEFAULTS = ServeSettings()
# The batching and limit options (flag, type, default, help), read back into a ServeSettings
# by run(); --max-body-mb is max_body_bytes in MB.
_SETTINGS_OPTIONS = (
    ("--max-batch", int, _DEFAULTS.max_batch,
     "most images in one model call (default %(default)s; 1 = no batching)"),
    ("--max-wait-ms", float, _DEFAULTS.max_wait_ms,
     "how long a batch's first image waits for others (default %(default)s)"),
    ("--max-queue", int, _DEFAULTS.max_queue,
     "images waiting for or in the model; requests beyond get 503 (default %(default)s)"),
    ("--max-body-mb", float, _DEFAULTS.max_body_bytes / 1e6,
     "largest request body in MB, 413 above (default %(default)g)"),
    ("--max-pixels", int, _DEFAULTS.max_pixels,
     "largest image, width x height, 413 above (default %(default)d)"),
    ("--max-files", int, _DEFAULTS.max_files,
     "most images in one multipart request (default %(default)s)"),
)  # fmt: skip


HELP = "serve a model over HTTP: a JSON API with dynamic batching, and a page to try it"
DESCRIPTION = """\
Serve a checkpoint, model file or exported .onnx: POST /v1/predict, GET /v1/model, /healthz,
/readyz, and a page at /. Binds to 127.0.0.1: put a reverse proxy in front to serve other
machines. Needs pip install 'resnext[serve]'.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="CHECKPOINT_OR_EXPORT", help="the model to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    p.add_argument(
        "--port", type=int, default=8000, help="port (default %(default)s; 0 = any free port)"
    )
    add_ema_options(p, "serve")
    add_runtime_options(p)
    for flag, kind, default, text in _SETTINGS_OPTIONS:
        p.add_argument(flag, type=kind, default=default, help=text)
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes, each with its own model copy and batcher (default 1)",
    )


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    if args.max_body_mb <= 0:
        raise ConfigError(f"--max-body-mb must be positive, got {args.max_body_mb:g}")
    settings = ServeSettings(
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        max_body_bytes=round(args.max_body_mb * 1e6),
        max_pixels=args.max_pixels,
        max_files=args.max_files,
    )
    from ..serve import require_dependencies

    require_dependencies()
    from ..serve.server import ModelSpec, run_server

    spec = ModelSpec(args.model, use_ema=args.ema, runtime=runtime_from_args(args))
    clf = spec.load()  # a bad file or option fails here, before anything listens
    print(
        f"resnext serve: {clf.model.arch.name} from {args.model}: {clf.backend_line}, "
        f"{clf.precision}, {clf.device}; batches of up to {settings.max_batch} images, "
        f"waiting up to {settings.max_wait_ms:g} ms",
        file=sys.stderr,
    )
    if args.workers > 1:
        clf = None  # each worker process loads its own copy; this one only supervises
    run_server(spec, settings, args.host, args.port, args.workers, classifier=clf)
    return 0
