"""The HTTP app: a :class:`~resnext.inference.Classifier` behind a small JSON API and a page.

Routes:

- ``POST /v1/predict[?topk=5]``: one image as the raw body (an ``image/*`` or
  ``application/octet-stream`` content type), or one or more as ``multipart/form-data``
  fields named ``file``; answers the top-k classes of each (``class``: the model's class,
  ``name``: what people read, a WordNet id's name; ``probability``), the model's name and
  back-end. They are those of ``resnext predict --json`` for the same files: the same
  decoding (:func:`~resnext.data.images.load_image`), preprocessing and model.
- ``POST /v1/predict?explain=1``: each prediction also carries ``explanation``: its top-1
  class's activation map blended over the image at the image's own size, as a base64 PNG
  (``overlay_png``), from the eager fp32 model beside the back-end's logits
  (:mod:`resnext.inference.explain`; ``classes_agree`` says whether that model ranks the
  same class first). A model without exact maps (an exported ``.onnx``) answers 422.
- ``GET /v1/model``: architecture, parameters, classes and their names, preprocessing,
  back-end, limits.
- ``GET /healthz``: the process is up. ``GET /readyz``: the model is loaded and warmed (503
  before), and how many images wait for or are in the model.
- ``GET /``: a page to drop or pick images and see their top-5 as bars.

Every error is JSON ``{"error": code, "message": ..., "request_id": ...}``; every response
carries ``X-Request-ID`` and every request gets one log line (logger ``resnext.serve``):
method, path, status, latency, the batch size(s) its images ran in, and the request id.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.resources
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path

import torch
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..data.eval_transforms import to_image_tensor
from ..errors import WeightsError
from ..inference import Classifier
from ..inference.explain import cam_head, explain_batch
from ..inference.overlay import blend, png_bytes
from ..models import ResNeXt
from .batching import Batcher, BatcherClosed, Overloaded
from .limits import (
    ASGIApp,
    BodyLimitMiddleware,
    Message,
    Receive,
    RequestError,
    Scope,
    Send,
    check_raw_media_type,
    decode_image,
    error_body,
    media_type,
    parse_flag,
    parse_topk,
    send_error,
)
from .settings import ServeSettings

log = logging.getLogger("resnext.serve")

ROUTES = "the server has GET /, /healthz, /readyz, /v1/model and POST /v1/predict"

# An X-Request-ID from a reverse proxy is kept when it looks like an id; otherwise (and when
# absent) the server makes one. Anything else could smuggle text into the log line.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class _Service:
    """The classifier, its batcher and its readiness, shared by the routes."""

    def __init__(self, classifier: Classifier, settings: ServeSettings, source: str) -> None:
        self.classifier = classifier
        self.settings = settings
        self.batcher = Batcher(
            classifier.probabilities,
            max_batch=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000,
            max_queue=settings.max_queue,
        )
        arch = getattr(classifier.model, "arch", None)  # every resnext model has one
        self.name = arch.name if arch is not None else type(classifier.model).__name__
        self.ready = False
        self.warm_error: str | None = None
        try:  # whether ?explain=1 can answer: exact maps need a GAP + linear head
            cam_head(classifier.model)
            self.explain_refused: str | None = None
        except WeightsError as e:
            self.explain_refused = str(e)
        self.info = {
            "model": self.name,
            "file": Path(source).name,
            "architecture": arch.to_dict() if arch is not None else None,
            "parameters": _count_parameters(classifier.model),
            "num_classes": classifier.num_classes,
            "classes": classifier.classes,
            "names": classifier.names,  # what people read (WordNet ids as their names)
            "preprocess": classifier.preprocess.to_dict(),
            "backend": classifier.backend,
            "precision": classifier.precision,
            "device": str(classifier.device),
            "settings": asdict(settings),
            "explain": self.explain_refused is None,  # POST /v1/predict?explain=1 answers
        }

    async def warm_up(self) -> None:
        """Run a full batch and a single image once, so that the first requests do not pay
        for lazy initialisation (onnxruntime's, the allocator's); then ready."""
        pre = self.classifier.preprocess
        start = time.perf_counter()
        try:
            for n in sorted({self.settings.max_batch, 1}, reverse=True):
                await self.batcher.run(
                    torch.zeros(n, len(pre.mean), pre.image_size, pre.image_size)
                )
        except Exception as e:
            self.warm_error = f"{type(e).__name__}: {e}"
            log.exception("warm-up failed; /readyz stays 503")
            return
        self.ready = True
        log.info("ready: warmed up in %.2f s", time.perf_counter() - start)

    def prepare(
        self, data: bytes, name: str, explain: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Uploaded bytes -> the preprocessed tensor and, to explain it, the picture as a
        ``(3, H, W)`` tensor (runs on a worker thread)."""
        image = decode_image(data, self.settings.max_pixels, name)
        return self.classifier.to_tensor(image), to_image_tensor(image) if explain else None

    def explain(
        self, tensors: list[torch.Tensor], pictures: list[torch.Tensor], probs: torch.Tensor
    ) -> list[dict]:
        """Each image's top-1 map (the back-end's class) blended over it, as the response
        carries it (runs on a worker thread)."""
        clf = self.classifier
        found = explain_batch(
            clf.model, torch.stack(tensors), probs, pictures, clf.classes, clf.preprocess, 1
        )
        return [
            {
                "class": e.classes[0],
                "classes_agree": e.agrees,
                "eager_class": e.eager_classes[0],
                "overlay_png": base64.b64encode(png_bytes(blend(e.image, e.maps[0]))).decode(),
            }
            for e in found
        ]


def _count_parameters(model: torch.nn.Module) -> int:
    """The model's parameters; for a resnext architecture counted on a copy built on the
    meta device (no memory, no init), so that an exported ONNX file counts the same."""
    arch = getattr(model, "arch", None)
    if arch is None:
        return sum(p.numel() for p in model.parameters())
    with torch.device("meta"):
        return sum(p.numel() for p in ResNeXt(**arch.to_dict()).parameters())


def create_app(classifier: Classifier, settings: ServeSettings, source: str = "model") -> ASGIApp:
    """The ASGI app serving ``classifier``; ``source`` is the file it was loaded from.

    The app's lifespan starts the batcher and warms the model in the background; run it in
    any ASGI server with lifespan support (``resnext serve`` runs uvicorn).
    """
    service = _Service(classifier, settings, source)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.batcher.start()
        warm = asyncio.create_task(service.warm_up(), name="resnext-warm-up")
        try:
            yield
        finally:
            if not warm.done():
                warm.cancel()
            await service.batcher.stop()

    html = importlib.resources.files(__package__).joinpath("static/index.html").read_text()

    async def page(request: Request) -> Response:
        return HTMLResponse(html)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        pending = service.batcher.pending  # images waiting for or in the model: how busy
        if service.ready:
            return JSONResponse({"ready": True, "pending": pending})
        reason = f"warm-up failed: {service.warm_error}" if service.warm_error else "warming up"
        return JSONResponse({"ready": False, "reason": reason, "pending": pending}, status_code=503)

    async def model(request: Request) -> Response:
        return JSONResponse(service.info)

    async def predict(request: Request) -> Response:
        if not service.ready:
            raise RequestError(503, "not_ready", "the model is still warming up; retry shortly")
        k = parse_topk(request.query_params.get("topk"))
        explain = parse_flag("explain", request.query_params.get("explain"))
        if explain and service.explain_refused is not None:
            raise RequestError(422, "explain_unavailable", service.explain_refused)
        if media_type(request.headers.get("content-type")) == "multipart/form-data":
            uploads = await _read_multipart(request, settings.max_files)
        else:
            check_raw_media_type(request.headers.get("content-type"))
            uploads = [(None, "the request body", await request.body())]
        prepared = await asyncio.gather(
            *(
                asyncio.to_thread(service.prepare, data, label, explain)
                for _, label, data in uploads
            )
        )
        tensors = [t for t, _ in prepared]
        try:
            results = await service.batcher.submit(tensors)
        except Overloaded as e:
            raise RequestError(503, "overloaded", str(e)) from None
        except BatcherClosed as e:
            raise RequestError(503, "shutting_down", str(e)) from None
        request.state.batch_sizes = [r.batch_size for r in results]
        probs = torch.stack([r.probabilities for r in results])
        top = classifier.topk(probs, k)
        predictions = [
            {
                "filename": filename,
                "topk": [
                    {"class": c, "name": classifier.name_of(c), "probability": p} for c, p in preds
                ],
            }
            for (filename, _, _), preds in zip(uploads, top, strict=True)
        ]
        if explain:
            pictures = [p for _, p in prepared if p is not None]
            found = await asyncio.to_thread(service.explain, tensors, pictures, probs)
            for prediction, explanation in zip(predictions, found, strict=True):
                prediction["explanation"] = explanation
        return JSONResponse(
            {"model": service.name, "backend": classifier.backend, "predictions": predictions}
        )

    async def request_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, RequestError):
            raise exc
        return _error_response(request, exc.status, exc.code, exc.message)

    async def http_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HTTPException):
            raise exc
        path = request.url.path
        if exc.status_code == 404:
            code, message = "not_found", f"no such path {path!r}: {ROUTES}"
        elif exc.status_code == 405:
            code, message = "method_not_allowed", f"{request.method} is not allowed on {path}"
        else:
            code, message = "http_error", str(exc.detail)
        response = _error_response(request, exc.status_code, code, message)
        response.headers.update(exc.headers or {})  # e.g. Allow on a 405
        return response

    return Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/v1/model", model, methods=["GET"]),
            Route("/v1/predict", predict, methods=["POST"]),
        ],
        middleware=[
            Middleware(RequestLogMiddleware),
            Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes),
        ],
        exception_handlers={RequestError: request_error, HTTPException: http_error},
        lifespan=lifespan,
    )


async def _read_multipart(request: Request, max_files: int) -> list[tuple[str | None, str, bytes]]:
    """(filename, how messages name it, bytes) of every ``file`` field, in order."""
    try:  # file parts are bounded by the body limit; text fields by Starlette's 1 MB
        form = await request.form(max_files=max_files, max_fields=max_files)
    except HTTPException as e:  # Starlette's answer to a malformed or oversized form
        raise RequestError(400, "bad_multipart", f"multipart body refused: {e.detail}") from None
    try:
        unexpected = sorted({key for key in form if key != "file"})
        if unexpected:
            raise RequestError(
                422,
                "unexpected_field",
                f"unexpected multipart field(s) {', '.join(map(repr, unexpected))}: send each "
                "image in a field named 'file'",
            )
        uploads = []
        for i, item in enumerate(form.getlist("file"), start=1):
            if not isinstance(item, UploadFile):
                raise RequestError(
                    422, "not_a_file", f"multipart field 'file' #{i} is text, not a file upload"
                )
            label = f"file {item.filename!r} (part {i})" if item.filename else f"file part {i}"
            uploads.append((item.filename, label, await item.read()))
    finally:
        await form.close()  # the spooled temporary files
    if not uploads:
        raise RequestError(
            422, "no_file", "the multipart body has no 'file' field: send each image as 'file'"
        )
    return uploads


def _error_response(request: Request, status: int, code: str, message: str) -> Response:
    request_id = getattr(request.state, "request_id", None)
    return JSONResponse(error_body(code, message, request_id), status_code=status)


class RequestLogMiddleware:
    """Gives each request an id (``X-Request-ID``), logs one line per request, and turns an
    exception no route handled into a 500 whose id the log line and traceback also carry."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 0  # 0 in the log = the client left before any answer

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request %s failed with an internal error", request_id)
            if status == 0:
                await send_error(
                    scope,
                    send_with_id,
                    RequestError(
                        500,
                        "internal_error",
                        "internal server error; the server log has the details under request "
                        f"id {request_id}",
                    ),
                )
        finally:
            sizes = state.get("batch_sizes")
            log.info(
                "%s %s %d %.1fms batch=%s id=%s",
                scope["method"],
                scope["path"],
                status,
                1000 * (time.perf_counter() - start),
                ",".join(map(str, sizes)) if sizes else "-",
                request_id,
            )
