"""The public HTTP routes: POST /predict, /predict_batch, /explain and GET /metadata.

The POST routes are typed ``@bentoml.api`` endpoints of serving/service.py (so BentoML's
/schema.json, its Python clients and /docs.json know them), but their bodies are never parsed
by BentoML: its file inputs read any body in full and fetch URLs given in place of a file. Their
input specs (serving/schema.py) hand the request over unread, and the handlers here receive it
under size and time limits (serving/uploads.py); only then does a request take one of
``serve.max_concurrency`` slots (503 with Retry-After when none is free) to be decoded and
predicted. Each file is validated from its header before decoding, every refusal is a JSON 4xx,
and only real faults are 5xx: 503 when the model service cannot answer now, 500 for a bug.
The GET routes, the web page and the API docs are a Starlette app mounted on the service.

Every answered image gets a request id (``request_id`` in the answer, ``X-Request-Id``) and one
row in the prediction log (serving/monitoring.py); POST /feedback joins a reviewer's label to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pneumo.config import ServeSettings
from pneumo.decision import Decision
from serving.errors import error_body, http_error_message
from serving.inputs import InputError, Radiograph, media_type, read_radiograph
from serving.monitoring import REQUEST_ID_HEADER, Monitoring
from serving.openapi import docs_routes
from serving.uploads import (
    MULTIPART,
    ServiceOverloadedError,
    Upload,
    read_files,
    read_upload,
    slot,
)
from serving.web import explain_layers, web_routes

log = logging.getLogger(__name__)

RETRY_AFTER = {"Retry-After": "1"}


class ModelUnavailableError(Exception):
    """The model service cannot answer now (restarting, overloaded, a dropped connection): the
    client may retry. Any other failure of a model call is a bug and answers 500."""


class Backend(Protocol):
    """What the routes need from the service: limits, the model's identity, and the model."""

    serve: ServeSettings
    image_size: int
    decision: Decision
    model_info: dict[str, Any]
    metrics: dict[str, Any]
    model_card: dict[str, Any]  # serving/web.py's read_model_card of the served model
    decode_limiter: anyio.CapacityLimiter  # decoding is CPU work: about one per core at once
    admission: anyio.CapacityLimiter  # requests past their upload (serve.max_concurrency)
    uploads: anyio.CapacityLimiter  # bodies being received (serve.max_uploads)
    monitoring: Monitoring  # the prediction log and the store behind /feedback and /live

    async def classify(self, images: np.ndarray) -> list[dict[str, Any]]: ...

    async def heatmaps(self, images: np.ndarray) -> np.ndarray: ...

    async def network(self) -> dict[str, Any]: ...


async def _decode(upload: Upload, backend: Backend) -> Radiograph:
    serve = backend.serve
    return await anyio.to_thread.run_sync(
        read_radiograph,
        upload.data,
        upload.content_type,
        backend.image_size,
        serve.max_pixels,
        serve.min_side,
        limiter=backend.decode_limiter,
    )


def _prediction(backend: Backend, result: dict[str, Any], radiograph: Radiograph) -> dict[str, Any]:
    return prediction_of(backend.decision, result, radiograph)


def prediction_of(
    decision: Decision, result: dict[str, Any], radiograph: Radiograph
) -> dict[str, Any]:
    """One image's answer (what /predict returns and the DICOM node reports) from the model's
    result and the decoded file."""
    probability = float(result["probability"])
    # The file's own screen first (colour, aspect), then the network-side guard.
    reason = radiograph.screen_reason or result.get("ood_reason")
    return {
        "probability": probability,
        "label": decision.label(probability),
        "threshold": decision.threshold,
        "refer_to_radiologist": decision.refer(probability, reason is not None),
        "referral_band": list(decision.referral_band),
        "out_of_distribution": reason is not None,
        "ood_score": result.get("ood_score"),
        "ood_reason": reason,  # why the model should not be trusted on this image
        "input": {
            "format": radiograph.format,
            "width": radiograph.width,
            "height": radiograph.height,
        },
    }


async def predict(request: Request, backend: Backend) -> Response:
    started = time.perf_counter()
    upload = await read_upload(request, backend.serve, backend.uploads)
    async with slot(backend.admission, "requests in progress"):
        radiograph = await _decode(upload, backend)
        (result,) = await backend.classify(radiograph.pixels[None])
    prediction = _prediction(backend, result, radiograph)
    request_id = backend.monitoring.new_id()
    backend.monitoring.record("predict", request_id, prediction, radiograph, upload.data, started)
    return _answer({"request_id": request_id, **prediction, "model": backend.model_info})


def _answer(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, headers={REQUEST_ID_HEADER: body["request_id"]})


async def _decode_all(uploads: list[Upload], backend: Backend) -> list[Radiograph]:
    """Decode every file concurrently; if any is unusable, one 4xx that lists each bad file."""
    radiographs: list[Radiograph | None] = [None] * len(uploads)
    problems: list[dict[str, Any]] = []

    async def decode(index: int, upload: Upload) -> None:
        try:
            radiographs[index] = await _decode(upload, backend)
        except InputError as exc:
            problem = {"index": index, "filename": upload.filename, "status": exc.status}
            problems.append({**problem, **exc.to_json()})

    async with anyio.create_task_group() as group:
        for index, upload in enumerate(uploads):
            group.start_soon(decode, index, upload)
    if problems:
        problems.sort(key=lambda p: p["index"])
        statuses = {p["status"] for p in problems}
        raise InputError(
            statuses.pop() if len(statuses) == 1 else 400,
            "invalid_files",
            f"{len(problems)} of {len(uploads)} files cannot be used; nothing was predicted",
            files=problems,
        )
    return [r for r in radiographs if r is not None]


async def predict_batch(request: Request, backend: Backend) -> Response:
    serve, started = backend.serve, time.perf_counter()
    if media_type(request.headers.get("content-type")) != MULTIPART:
        raise InputError(
            415,
            "unsupported_media_type",
            "send the radiographs as multipart/form-data, one file field each "
            "(e.g. `curl -F images=@a.jpeg -F images=@b.dcm`)",
        )
    files = await read_files(request, serve, backend.uploads, max_files=serve.max_batch_files)
    if not files:
        raise InputError(400, "no_file", "the form holds no file: add one file field per image")
    async with slot(backend.admission, "requests in progress"):
        decoded = await _decode_all(files, backend)
        results = await backend.classify(np.stack([r.pixels for r in decoded]))
    batch_id, predictions = backend.monitoring.new_id(), []
    for i, (upload, result, radiograph) in enumerate(zip(files, results, decoded, strict=True)):
        prediction, request_id = _prediction(backend, result, radiograph), f"{batch_id}-{i}"
        backend.monitoring.record("predict_batch", request_id, prediction, radiograph,
                                  upload.data, started, batch_id)  # fmt: skip
        predictions.append(
            {"request_id": request_id, "index": i, "filename": upload.filename, **prediction}
        )
    return _answer(
        {"request_id": batch_id, "predictions": predictions, "model": backend.model_info}
    )


async def explain(request: Request, backend: Backend) -> Response:
    """Grad-CAM of the pneumonia logit: a PNG overlay, the raw map with ?format=json, or
    ?format=layers (the web page): the model's view and the heatmap colours as PNG data URLs."""
    from pneumo.inference.gradcam import overlay_png

    started = time.perf_counter()
    wanted = request.query_params.get("format", "png").lower()
    if wanted not in ("png", "json", "layers"):
        raise InputError(
            400, "invalid_format", "format must be 'png' (default), 'json' or 'layers'"
        )
    upload = await read_upload(request, backend.serve, backend.uploads)
    async with slot(backend.admission, "requests in progress"):
        radiograph = await _decode(upload, backend)
        (result,) = await backend.classify(radiograph.pixels[None])
        heatmap = (await backend.heatmaps(radiograph.pixels[None]))[0]
    prediction = _prediction(backend, result, radiograph)
    request_id = backend.monitoring.new_id()
    answer = {"request_id": request_id, **prediction}
    if wanted == "json":
        heatmap_json = {
            "heatmap": np.round(heatmap, 4).tolist(),
            "heatmap_shape": list(heatmap.shape),
        }
        response: Response = _answer({**answer, **heatmap_json, "model": backend.model_info})
    elif wanted == "layers":
        layers = await anyio.to_thread.run_sync(explain_layers, radiograph.pixels, heatmap)
        response = _answer({**answer, **layers, "model": backend.model_info})
    else:
        png = await anyio.to_thread.run_sync(overlay_png, radiograph.pixels, heatmap)
        response = Response(png, media_type="image/png", headers=_explain_headers(answer))
    backend.monitoring.record("explain", request_id, prediction, radiograph, upload.data, started)
    return response


def _explain_headers(prediction: dict[str, Any]) -> dict[str, str]:
    return {
        REQUEST_ID_HEADER: prediction["request_id"],
        "X-Pneumo-Probability": f"{prediction['probability']:.6f}",
        "X-Pneumo-Label": str(prediction["label"]),
        "X-Pneumo-Refer": str(prediction["refer_to_radiologist"]).lower(),
    }


async def feedback(request: Request, backend: Backend, fields: dict[str, Any]) -> Response:
    """A reviewer's label for an answered prediction: 201 when new, 200 when it replaced the
    same reviewer's earlier one (the answer says so)."""
    answer = await backend.monitoring.feedback(fields)
    return JSONResponse(answer, status_code=200 if answer["replaced"] else 201)


async def live(request: Request) -> Response:
    """The model card's live tab: requests, positive and OOD rates, feedback agreement per day."""
    backend: Backend = request.app.state.backend()
    return JSONResponse(await backend.monitoring.live())


async def _input_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, InputError)
    return JSONResponse(exc.to_json(), status_code=exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = http_error_message(request.scope, exc.status_code, str(exc.detail))
    body = error_body(exc.status_code, message)
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _overloaded(request: Request, exc: Exception) -> Response:
    log.warning("refused %s: %s", request.url.path, exc)
    body = error_body(503, "the service is busy: retry in a second", "overloaded")
    return JSONResponse(body, status_code=503, headers=RETRY_AFTER)


async def _model_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("model call failed on %s: %s", request.url.path, exc)
    body = error_body(503, "the model is busy or restarting: retry shortly", "model_unavailable")
    return JSONResponse(body, status_code=503, headers=RETRY_AFTER)


async def _client_gone(request: Request, _: Exception) -> Response:
    # Nobody is left to answer: not a fault of the service, so no traceback and no 5xx.
    log.info("client disconnected while sending its request to %s", request.url.path)
    return Response(status_code=499)  # nginx's "client closed request"; never delivered


async def _unexpected(request: Request, exc: Exception) -> Response:
    # A bug: logged once with its traceback for the operator; the client learns no internals.
    log.error("unexpected error on %s", request.url.path, exc_info=exc)
    return JSONResponse(error_body(500, "internal error"), status_code=500)


ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]
ERROR_HANDLERS: dict[type[Exception], ErrorHandler] = {
    InputError: _input_error,
    HTTPException: _http_error,
    ServiceOverloadedError: _overloaded,
    ModelUnavailableError: _model_unavailable,
    ClientDisconnect: _client_gone,
    Exception: _unexpected,
}
Handler = Callable[[Request, Backend], Awaitable[Response]]


async def respond(handler: Handler, request: Request, backend: Backend) -> Response:
    """Run a POST route; any failure becomes its JSON answer, as in the Starlette app (BentoML
    would turn every exception of a typed endpoint into a bare 500)."""
    try:
        return await handler(request, backend)
    except Exception as exc:
        kind = next(k for k in type(exc).__mro__ if k in ERROR_HANDLERS)
        return await ERROR_HANDLERS[kind](request, exc)


async def metadata(request: Request) -> Response:
    backend: Backend = request.app.state.backend()
    serve = backend.serve
    return JSONResponse(
        {
            "model": backend.model_info,
            "network": await backend.network(),
            "threshold": backend.decision.threshold,
            "referral_band": list(backend.decision.referral_band),
            "image_size": backend.image_size,
            "metrics": backend.metrics,
            "limits": {
                "max_request_bytes": serve.max_request_bytes,
                "max_pixels": serve.max_pixels,
                "min_side": serve.min_side,
                "max_batch_files": serve.max_batch_files,
            },
            "accepts": ["image/jpeg", "image/png", "application/dicom", MULTIPART],
            "monitoring": backend.monitoring.counts(),
        }
    )


def create_app(backend: Callable[[], Backend], document: Callable[[], dict[str, Any]]) -> Starlette:
    """The GET routes, the web page and the API docs (``document()``: the OpenAPI document),
    reading the live service through ``backend()`` on every request."""
    app = Starlette(
        routes=[
            Route("/metadata", metadata, methods=["GET"]),
            Route("/live", live, methods=["GET"]),
            *web_routes(),
            *docs_routes(document),
        ],
        exception_handlers=ERROR_HANDLERS,
    )
    app.state.backend = backend
    return app
