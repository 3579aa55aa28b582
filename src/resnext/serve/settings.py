"""How the server batches and what it refuses: the ``resnext serve`` options as one record.

It imports nothing of the web stack, so the command line can show its defaults without the
``serve`` extra installed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class ServeSettings:
    """Batching and limits of one server (each worker process applies them on its own)."""

    max_batch: int = 16  # the most images one model call takes
    max_wait_ms: float = 5.0  # how long a batch's first image waits for others to join it
    max_queue: int = 256  # images waiting for or in the model; requests beyond get 503
    max_body_bytes: int = 20_000_000  # request body limit: 413 above it
    max_pixels: int = 50_000_000  # width x height limit of one image: 413 above it
    max_files: int = 64  # images in one multipart request: 400 above it

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "max_body_bytes", "max_pixels", "max_files"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms must be at least 0, got {self.max_wait_ms}")
        if self.max_files > self.max_queue:
            raise ConfigError(
                f"max_files ({self.max_files}) is more than max_queue ({self.max_queue}): a "
                "request that large could never be queued"
            )
