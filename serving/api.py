"""The public HTTP routes: /predict, /predict_batch, /explain and /metadata (a Starlette app).

Mounted on the BentoML service (serving/service.py) instead of typed ``@bentoml.api`` inputs,
because a diagnostic endpoint must control every byte it accepts: BentoML's file inputs read
bodies without a size limit and fetch URLs given in place of a file. Here the body is streamed
against ``serve.max_request_bytes``, each file is validated from its header before decoding, and
every refusal is a JSON 4xx; the model itself runs behind the model service's batched API.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pneumo.config import ServeSettings
from pneumo.decision import Decision
from serving.inputs import InputError, Radiograph, media_type, read_radiograph
from serving.web import explain_layers, web_routes

log = logging.getLogger(__name__)

MULTIPART = "multipart/form-data"


class ModelUnavailableError(Exception):
    """The model service cannot answer now (overloaded or restarting): the client may retry."""


class Backend(Protocol):
    """What the routes need from the service: limits, the model's identity, and the model."""

    serve: ServeSettings
    image_size: int
    decision: Decision
    model_info: dict[str, Any]
    metrics: dict[str, Any]
    model_card: dict[str, Any]  # serving/web.py's read_model_card of the served model
    decode_limiter: anyio.CapacityLimiter  # decoding is CPU work: about one per core at once

    async def classify(self, images: np.ndarray) -> list[dict[str, Any]]: ...

    async def heatmaps(self, images: np.ndarray) -> np.ndarray: ...


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InputError(400, "invalid_content_length", "the Content-Length header is invalid")
        if int(declared) > limit:
            raise InputError(
                413, "body_too_large", f"the request body is {declared} bytes, above {limit}"
            )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InputError(413, "body_too_large", f"the request body is above {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_files(request: Request, serve: ServeSettings, max_files: int) -> list[UploadFile]:
    """The uploaded files of a multipart body (already size-checked); text fields are ignored."""
    body = await read_body(request, serve.max_request_bytes)

    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(max_files=max_files, max_fields=32)
    return [value for _, value in form.multi_items() if isinstance(value, UploadFile)]


async def _decode(data: bytes, content_type: str | None, backend: Backend) -> Radiograph:
    serve = backend.serve
    return await anyio.to_thread.run_sync(
        read_radiograph,
        data,
        content_type,
        backend.image_size,
        serve.max_pixels,
        serve.min_side,
        limiter=backend.decode_limiter,
    )


async def read_one(request: Request, backend: Backend) -> tuple[Radiograph, str | None]:
    """One radiograph from a raw body (its own content type) or a one-file multipart form."""
    declared = media_type(request.headers.get("content-type"))
    if declared == MULTIPART:
        files = await read_files(request, backend.serve, max_files=1)
        if not files:
            raise InputError(
                400, "no_file", "the form holds no file: send it as e.g. `curl -F image=@x.jpeg`"
            )
        upload = files[0]
        data = await upload.read()
        return await _decode(data, upload.content_type, backend), _name(upload)
    if declared == "application/x-www-form-urlencoded":
        raise InputError(
            415,
            "unsupported_media_type",
            "a form-encoded body cannot carry an image: send the file with its own content type "
            "(-H 'Content-Type: image/jpeg' --data-binary @x.jpeg) or as multipart (-F image=@x.jpeg)",
        )
    data = await read_body(request, backend.serve.max_request_bytes)
    return await _decode(data, request.headers.get("content-type"), backend), None


def _name(upload: UploadFile) -> str | None:
    """The client's file name without any folders, for echoing back."""
    if not upload.filename:
        return None
    return upload.filename.replace("\\", "/").rsplit("/", 1)[-1][:200] or None


async def _classify(backend: Backend, images: np.ndarray) -> list[dict[str, Any]]:
    try:
        return await backend.classify(images)
    except Exception as exc:
        raise ModelUnavailableError(str(exc)) from exc


def _prediction(backend: Backend, result: dict[str, Any], radiograph: Radiograph) -> dict[str, Any]:
    probability = float(result["probability"])
    decision = backend.decision
    return {
        "probability": probability,
        "label": decision.label(probability),
        "threshold": decision.threshold,
        "refer_to_radiologist": decision.refer(probability),
        "referral_band": list(decision.referral_band),
        "input": {
            "format": radiograph.format,
            "width": radiograph.width,
            "height": radiograph.height,
        },
    }


async def predict(request: Request) -> Response:
    backend: Backend = request.app.state.backend()
    radiograph, _ = await read_one(request, backend)
    (result,) = await _classify(backend, radiograph.pixels[None])
    return JSONResponse({**_prediction(backend, result, radiograph), "model": backend.model_info})


async def predict_batch(request: Request) -> Response:
    backend: Backend = request.app.state.backend()
    serve = backend.serve
    if media_type(request.headers.get("content-type")) != MULTIPART:
        raise InputError(
            415,
            "unsupported_media_type",
            "send the radiographs as multipart/form-data, one file field each "
            "(e.g. `curl -F images=@a.jpeg -F images=@b.dcm`)",
        )
    files = await read_files(request, serve, max_files=serve.max_batch_files)
    if not files:
        raise InputError(400, "no_file", "the form holds no file: add one file field per image")
    radiographs: list[Radiograph | None] = [None] * len(files)
    problems: list[dict[str, Any]] = []

    async def decode(index: int, upload: UploadFile) -> None:
        try:
            data = await upload.read()
            radiographs[index] = await _decode(data, upload.content_type, backend)
        except InputError as exc:
            problems.append(
                {"index": index, "filename": _name(upload), "status": exc.status, **exc.to_json()}
            )

    async with anyio.create_task_group() as group:
        for index, upload in enumerate(files):
            group.start_soon(decode, index, upload)
    if problems:
        problems.sort(key=lambda p: p["index"])
        statuses = {p["status"] for p in problems}
        body = {
            "error": f"{len(problems)} of {len(files)} files cannot be used; nothing was predicted",
            "code": "invalid_files",
            "files": problems,
        }
        return JSONResponse(body, status_code=statuses.pop() if len(statuses) == 1 else 400)
    decoded = [r for r in radiographs if r is not None]
    results = await _classify(backend, np.stack([r.pixels for r in decoded]))
    predictions = [
        {"index": i, "filename": _name(upload), **_prediction(backend, result, radiograph)}
        for i, (upload, result, radiograph) in enumerate(zip(files, results, decoded, strict=True))
    ]
    return JSONResponse({"predictions": predictions, "model": backend.model_info})


async def explain(request: Request) -> Response:
    """Grad-CAM of the pneumonia logit: a PNG overlay, the raw map with ?format=json, or
    ?format=layers (the web page): the model's view and the heatmap colours as PNG data URLs."""
    from pneumo.explain import overlay_png

    backend: Backend = request.app.state.backend()
    wanted = request.query_params.get("format", "png").lower()
    if wanted not in ("png", "json", "layers"):
        raise InputError(
            400, "invalid_format", "format must be 'png' (default), 'json' or 'layers'"
        )
    radiograph, _ = await read_one(request, backend)
    (result,) = await _classify(backend, radiograph.pixels[None])
    try:
        heatmap = (await backend.heatmaps(radiograph.pixels[None]))[0]
    except Exception as exc:
        raise ModelUnavailableError(str(exc)) from exc
    prediction = _prediction(backend, result, radiograph)
    if wanted == "json":
        return JSONResponse(
            {
                **prediction,
                "heatmap": np.round(heatmap, 4).tolist(),
                "heatmap_shape": list(heatmap.shape),
                "model": backend.model_info,
            }
        )
    if wanted == "layers":
        layers = await anyio.to_thread.run_sync(explain_layers, radiograph.pixels, heatmap)
        return JSONResponse({**prediction, **layers, "model": backend.model_info})
    png = await anyio.to_thread.run_sync(overlay_png, radiograph.pixels, heatmap)
    headers = {
        "X-Pneumo-Probability": f"{prediction['probability']:.6f}",
        "X-Pneumo-Label": str(prediction["label"]),
        "X-Pneumo-Refer": str(prediction["refer_to_radiologist"]).lower(),
    }
    return Response(png, media_type="image/png", headers=headers)


async def metadata(request: Request) -> Response:
    backend: Backend = request.app.state.backend()
    serve = backend.serve
    return JSONResponse(
        {
            "model": backend.model_info,
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
        }
    )


async def _input_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, InputError)
    return JSONResponse(exc.to_json(), status_code=exc.status)


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(
        exc.status_code, "http_error"
    )
    return JSONResponse(
        {"error": str(exc.detail), "code": code}, status_code=exc.status_code, headers=exc.headers
    )


async def _model_unavailable(request: Request, exc: Exception) -> Response:
    log.warning("model call failed on %s: %r (%r)", request.url.path, exc, exc.__cause__)
    return JSONResponse(
        {"error": "the model is busy or restarting: retry shortly", "code": "model_unavailable"},
        status_code=503,
        headers={"Retry-After": "1"},
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Logged with its traceback for the operator; the client learns nothing about the internals.
    log.error("unexpected error on %s", request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal error", "code": "internal_error"}, status_code=500)


def create_app(backend: Callable[[], Backend]) -> Starlette:
    """The routes, reading the live service through ``backend()`` on every request."""
    app = Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/predict_batch", predict_batch, methods=["POST"]),
            Route("/explain", explain, methods=["POST"]),
            Route("/metadata", metadata, methods=["GET"]),
            *web_routes(),
        ],
        exception_handlers={
            InputError: _input_error,
            HTTPException: _http_error,
            ModelUnavailableError: _model_unavailable,
            Exception: _unexpected,
        },
    )
    app.state.backend = backend
    return app
