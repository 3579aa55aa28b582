"""``resnext serve``: a model behind an HTTP API and a page, with dynamic batching and limits.

Built on Starlette and uvicorn, the ``serve`` extra (``pip install 'resnext[serve]'``).
``resnext.serve.create_app`` and ``run_server`` check for them first and raise a
:class:`~resnext.errors.ConfigError` naming the install command when they are missing.

- :mod:`.app`: the routes, request ids and the one log line per request.
- :mod:`.batching`: gathers concurrent requests' images into one model call.
- :mod:`.limits`: what is refused, and with which status.
- :mod:`.server`: the socket, uvicorn, worker processes, graceful shutdown.
- :mod:`.settings`: the batching and limit options.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from ..errors import ConfigError
from .settings import ServeSettings

# (import name, the package to pip install) of what the app and the server need.
_REQUIRED = (
    ("starlette", "starlette"),
    ("uvicorn", "uvicorn"),
    ("python_multipart", "python-multipart"),
)
# Public names that import the web stack, and the module that defines each.
_NEEDS_WEB = {"create_app": ".app", "ModelSpec": ".server", "run_server": ".server"}


def require_dependencies() -> None:
    """Raise a ConfigError naming the missing packages of the ``serve`` extra, if any."""
    missing = [pip for name, pip in _REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"resnext serve needs {', '.join(missing)}, not installed here: "
            "pip install 'resnext[serve]'"
        )


def __getattr__(name: str) -> Any:
    if name in _NEEDS_WEB:
        require_dependencies()
        return getattr(importlib.import_module(_NEEDS_WEB[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ModelSpec", "ServeSettings", "create_app", "require_dependencies", "run_server"]
