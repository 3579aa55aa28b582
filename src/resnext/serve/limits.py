"""What the server refuses, and why: bodies over the size limit, images over the pixel limit,
wrong content types, bytes that are not an image, bad query values.

Every refusal is a :class:`RequestError`: an HTTP status, a short machine-readable code and a
message naming the problem, answered as JSON by the app while the server keeps serving.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from PIL import Image

from ..data.images import BadImageError, load_image
from ..errors import ResnextError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Content types of a raw-body image; anything that is not multipart/form-data or one of these
# is refused with 415. application/octet-stream is what many clients send for "some file".
RAW_IMAGE_TYPES = ("image/", "application/octet-stream")


class RequestError(ResnextError):
    """A request the server refuses: ``status`` (4xx/5xx), ``code`` and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_body(code: str, message: str, request_id: str | None) -> dict[str, Any]:
    """The JSON every error response carries."""
    return {"error": code, "message": message, "request_id": request_id}


def megabytes(n: int) -> str:
    """``20 MB`` for 20,000,000 bytes; how the body limit is named in messages."""
    return f"{n / 1e6:g} MB"


class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with 413, counting while they stream in.

    A declared ``Content-Length`` over the limit is refused before any of the body is read
    (so a client waiting on ``Expect: 100-continue`` never sends it); a chunked or lying
    body is refused as soon as the bytes received pass the limit, without reading the rest.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def too_large(self) -> RequestError:
        return RequestError(
            413,
            "body_too_large",
            f"the request body is over the server's limit of {megabytes(self.max_bytes)} "
            "(resnext serve --max-body-mb)",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            # The body stays unread, so the connection cannot carry another request.
            await send_error(scope, send, self.too_large(), close=True)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self.too_large()  # answered by the app's RequestError handler
            return message

        await self.app(scope, limited_receive, send)


async def send_error(scope: Scope, send: Send, error: RequestError, close: bool = False) -> None:
    """Answer ``error`` as JSON straight on the ASGI channel (outside the app's routing);
    ``close`` asks the server to close the connection after it."""
    request_id = scope.get("state", {}).get("request_id")
    body = json.dumps(
        error_body(error.code, error.message, request_id), separators=(",", ":")
    ).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def media_type(content_type: str | None) -> str:
    """``image/png`` of ``image/png; charset=x``, lower case; empty when absent."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_raw_media_type(content_type: str | None) -> None:
    """Refuse (415) a raw body whose content type is not an image one."""
    kind = media_type(content_type)
    if not kind.startswith(RAW_IMAGE_TYPES):
        shown = f"content type {kind!r}" if kind else "a request without a content type"
        raise RequestError(
            415,
            "unsupported_media_type",
            f"{shown} is not accepted: send the image as the raw body with an image/* "
            "content type (or application/octet-stream), or as multipart/form-data "
            "in 'file' fields",
        )


def parse_topk(value: str | None, default: int = 5) -> int:
    """The ``topk`` query value: an integer of at least 1 (422 otherwise). Like ``resnext
    predict --topk``, a value above the number of classes gives every class."""
    if value is None:
        return default
    try:
        k = int(value)
    except ValueError:
        k = 0
    if k < 1 or str(k) != value.strip():
        raise RequestError(422, "bad_topk", f"topk must be an integer of at least 1, got {value!r}")
    return k


def parse_flag(name: str, value: str | None) -> bool:
    """A yes/no query value: ``1``/``true``/``yes`` or ``0``/``false``/``no`` (absent: no);
    422 otherwise."""
    if value is None:
        return False
    v = value.strip().lower()
    if v in ("1", "true", "yes"):
        return True
    if v in ("0", "false", "no", ""):
        return False
    raise RequestError(422, f"bad_{name}", f"{name} must be 1 or 0 (true/false), got {value!r}")


def limit_pillow_pixels(max_pixels: int) -> None:
    """Make Pillow itself refuse images over ``max_pixels`` in this process: its
    decompression-bomb limit set to ours, and its warning (raised between 1x and 2x the
    limit, where it would otherwise decode anyway) made an error.

    Process-wide, so the serving process calls it once at start; :func:`decode_image`
    checks the same limit itself wherever this was not called.
    """
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("error", Image.DecompressionBombWarning)


def decode_image(data: bytes, max_pixels: int, name: str) -> Image.Image:
    """Decode an uploaded image exactly as ``resnext predict`` decodes a file (upright RGB,
    :func:`~resnext.data.images.load_image`), refusing it (:class:`RequestError`) when it is
    empty (400), over ``max_pixels`` (413; checked from the header, before decoding), not an
    image (422) or broken, e.g. a truncated JPEG (422). ``name`` says which upload in messages.
    """
    if not data:
        raise RequestError(400, "empty_body", f"{name} is empty: send the image's bytes")
    try:
        with Image.open(io.BytesIO(data)) as probe:  # reads the header only
            width, height = probe.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise RequestError(
            413,
            "too_many_pixels",
            f"{name} is over the server's limit of {max_pixels:,} pixels "
            f"(resnext serve --max-pixels): {e}",
        ) from None
    except Image.UnidentifiedImageError:
        raise RequestError(
            422, "not_an_image", f"{name} is not an image file (not a format Pillow can read)"
        ) from None
    except Exception as e:  # a recognised format whose header is broken
        raise RequestError(422, "bad_image", f"{name} cannot be read: {e}") from None
    if width * height > max_pixels:
        raise RequestError(
            413,
            "too_many_pixels",
            f"{name} is {width}x{height} = {width * height:,} pixels, over the server's "
            f"limit of {max_pixels:,} (resnext serve --max-pixels)",
        )
    try:
        # load_image opens whatever Image.open opens: a file object as well as a path.
        return load_image(io.BytesIO(data))  # type: ignore[arg-type]
    except BadImageError as e:
        raise RequestError(422, "bad_image", f"{name} cannot be decoded: {e.reason}") from None
