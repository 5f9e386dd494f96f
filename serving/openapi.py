"""The API's OpenAPI document (/docs.json) and its Swagger UI (/docs), offline.

BentoML generates the document of the service (probes, metrics, the typed endpoints); this adds
what it cannot know: that the endpoints also take a raw body with the file's own content type,
the answers' schemas and examples, each 4xx/5xx with its ``{"error", "code"}`` codes, the query
parameter of /explain and the GET routes of the mounted app. BentoML's own index page loads a
tag manager from the internet; /docs is our page over the Swagger UI files BentoML ships.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from serving.schema import (
    BATCH_ERRORS,
    DEADLINE_ERRORS,
    EXPLAIN_ERRORS,
    FEEDBACK_ERRORS,
    FEEDBACK_EXAMPLE,
    IMAGE_TYPES,
    PREDICTION_EXAMPLE,
    UPLOAD_ERRORS,
    BatchPrediction,
    ErrorAnswer,
    Explanation,
    ExplanationLayers,
    FeedbackAnswer,
    Metadata,
    Prediction,
)
from serving.uploads import MULTIPART

STATIC = Path(__file__).resolve().parent / "static"
REF = "#/components/schemas/{model}"
BINARY = {"type": "string", "format": "binary"}
ANSWER_MODELS: tuple[type[BaseModel], ...] = (
    Prediction,
    BatchPrediction,
    Explanation,
    ExplanationLayers,
    Metadata,
    FeedbackAnswer,
    ErrorAnswer,
)


def swagger_assets() -> Path:
    """The Swagger UI files inside the installed BentoML (its own docs page uses them)."""
    from bentoml._internal import server

    return Path(server.__file__).parent / "static_content"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    media = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"application/json": media}


def _components() -> dict[str, Any]:
    """JSON schemas of the answers, their nested models included."""
    schemas: dict[str, Any] = {}
    for model in ANSWER_MODELS:
        schema = model.model_json_schema(ref_template=REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return schemas


def error_responses(*tables: dict[int, dict[str, str]]) -> dict[str, Any]:
    """One response per status: the ErrorAnswer schema with the codes it can carry."""
    merged: dict[int, dict[str, str]] = {}
    for table in tables:
        for status, codes in table.items():
            merged.setdefault(status, {}).update(codes)
    responses = {}
    for status, codes in sorted(merged.items()):
        schema = {"allOf": [_ref(ErrorAnswer)], "properties": {"code": {"enum": list(codes)}}}
        first = next(iter(codes))
        response: dict[str, Any] = {
            "description": "; ".join(f"`{code}`: {text}" for code, text in codes.items()),
            "content": _json(schema, {"error": codes[first], "code": first}),
        }
        if status == 503:
            response["headers"] = {
                "Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}
            }
        responses[str(status)] = response
    return responses


def _upload_body(field: str, many: bool) -> dict[str, Any]:
    item = {**BINARY, "description": "JPEG, PNG or DICOM (Part 10)"}
    form = {
        "type": "object",
        "required": [field],
        "properties": {field: {"type": "array", "items": item} if many else item},
    }
    content = {MULTIPART: {"schema": form}}
    if not many:  # the raw body, with the file's own content type (octet-stream: sniffed)
        content |= {media: {"schema": BINARY} for media in IMAGE_TYPES}
    return {"required": True, "content": content}


PREDICTION_HEADERS = {
    name: {"schema": {"type": "string"}, "description": text}
    for name, text in (
        ("X-Pneumo-Probability", "probability of pneumonia"),
        ("X-Pneumo-Label", "NORMAL or PNEUMONIA"),
        ("X-Pneumo-Refer", "true when the call is close: refer to a radiologist"),
    )
}
FORMAT_PARAMETER = {
    "name": "format",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": ["png", "json", "layers"], "default": "png"},
    "description": "png: the overlay; json: the raw heatmap; layers: two PNG data URLs",
}


def _upload_operation(
    summary: str, field: str, answer: dict[str, Any], *errors: dict[int, dict[str, str]]
) -> dict[str, Any]:
    """A typed POST endpoint as BentoML cannot describe it: its bodies, answer and errors."""
    return {
        "summary": summary,
        "requestBody": _upload_body(field, many=field == "images"),
        "responses": {"200": answer, **error_responses(UPLOAD_ERRORS, DEADLINE_ERRORS, *errors)},
    }


def _post_routes(example: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What BentoML cannot say about the typed POST endpoints."""
    batch_example = {
        "predictions": [{**example, "index": 0, "filename": "a.jpeg"}],
        "model": example["model"],
    }
    explained = {"oneOf": [_ref(Explanation), _ref(ExplanationLayers)]}
    explain = _upload_operation(
        "Grad-CAM of the pneumonia score on the model's view",
        "image",
        {
            "description": "the overlay (png) or the heatmap with the call (json, layers)",
            "headers": PREDICTION_HEADERS,
            "content": {"image/png": {"schema": BINARY}, **_json(explained)},
        },
        EXPLAIN_ERRORS,
    )
    return {
        "/predict": _upload_operation(
            "Probability of pneumonia in one radiograph",
            "image",
            {"description": "the call", "content": _json(_ref(Prediction), example)},
        ),
        "/predict_batch": _upload_operation(
            "Predict several radiographs: all or, if any file is unusable, none",
            "images",
            {
                "description": "one call per file",
                "content": _json(_ref(BatchPrediction), batch_example),
            },
            BATCH_ERRORS,
        ),
        "/explain": {**explain, "parameters": [FORMAT_PARAMETER]},
        "/feedback": _feedback_operation(),
    }


def _feedback_operation() -> dict[str, Any]:
    """POST /feedback: BentoML describes its JSON body; this adds the answers and errors."""
    answer = _json(_ref(FeedbackAnswer), FEEDBACK_EXAMPLE)
    replaced = {**FEEDBACK_EXAMPLE, "replaced": True, "previous_label": "PNEUMONIA",
                "message": "replaced dr.okafor's earlier feedback (PNEUMONIA -> NORMAL)"}  # fmt: skip
    return {
        "summary": "A reviewer's label for an answered radiograph (confirm or correct the call)",
        "description": "Joined to the prediction by request_id; one feedback per reviewer and "
        "request: a second one from the same reviewer replaces the first and says so.",
        "responses": {
            "201": {"description": "recorded", "content": answer},
            "200": {
                "description": "replaced the reviewer's earlier feedback",
                "content": _json(_ref(FeedbackAnswer), replaced),
            },
            **error_responses(FEEDBACK_ERRORS, DEADLINE_ERRORS),
        },
    }


def _get_routes() -> dict[str, dict[str, Any]]:
    """The GET routes of the mounted app (serving/api.py, serving/web.py)."""
    card = {"type": "object", "description": "model, registration, evaluation, data, ROC"}
    live = {
        "type": "object",
        "description": "available, since, days: [{day, requests, ...}], total",
    }
    return {
        "/metadata": {
            "get": {
                "summary": "The served model, its decision threshold, metrics and limits",
                "tags": ["Service APIs"],
                "operationId": "metadata",
                "responses": {
                    "200": {"description": "the model", "content": _json(_ref(Metadata))}
                },
            }
        },
        "/live": {
            "get": {
                "summary": "Live figures from the prediction log: per day, requests, positive "
                "rate, OOD and referral rates, feedback agreement (last 30 days)",
                "tags": ["Service APIs"],
                "operationId": "live",
                "responses": {"200": {"description": "the days", "content": _json(live)}},
            }
        },
        "/model_card": {
            "get": {
                "summary": "The model card's data (the page is /model-card)",
                "tags": ["Service APIs"],
                "operationId": "model_card",
                "responses": {"200": {"description": "the card", "content": _json(card)}},
            }
        },
    }


def openapi_document(
    bentoml_document: dict[str, Any], served: dict[str, Any] | None = None
) -> dict[str, Any]:
    """BentoML's document of the service with the guarded routes described in full; ``served``
    (threshold, referral band, model) puts the served model's own values in the examples."""
    document = copy.deepcopy(bentoml_document)
    document["openapi"] = "3.1.0"  # pydantic writes JSON Schema 2020-12, as OpenAPI 3.1 reads it
    document["info"]["description"] = (
        "Pneumonia in paediatric chest radiographs: JPEG, PNG or DICOM in, probability, label, "
        "referral flag and Grad-CAM out. Every refusal is a JSON 4xx {error, code}."
    )
    paths = document.setdefault("paths", {})
    example = {**PREDICTION_EXAMPLE, **(served or {})}
    for path, details in _post_routes(example).items():
        operation = paths[path]["post"]
        operation.update(details)
    paths.update(_get_routes())
    document["info"].pop("contact", None)  # BentoML's team: not who runs this service
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name in list(schemas):  # BentoML's copies of the answers, and its "type": "file" forms
        if name.endswith("IODescriptor") or name.startswith("Radiograph"):
            del schemas[name]
    schemas.update(_components())
    _drop_unreferenced(document)
    return document


def _drop_unreferenced(document: dict[str, Any]) -> None:
    """Remove component schemas no path refers to (BentoML's task and exception models)."""
    schemas = document["components"]["schemas"]
    text = json.dumps(document["paths"])
    kept: set[str] = set()
    while True:
        found = {name for name in schemas if f'"{REF.format(model=name)}"' in text} - kept
        if not found:
            break
        kept |= found
        text = json.dumps([schemas[name] for name in found])
    for name in set(schemas) - kept:
        del schemas[name]


def docs_routes(document: Callable[[], dict[str, Any]]) -> list[BaseRoute]:
    """/docs (Swagger UI, nothing from the internet), /docs.json and the UI's files."""
    cached = functools.cache(document)

    async def docs_json(_: Request) -> Response:
        return JSONResponse(cached())

    async def docs_page(_: Request) -> Response:
        return FileResponse(STATIC / "docs.html", headers={"Cache-Control": "no-cache"})

    return [
        Route("/docs", docs_page, methods=["GET"]),
        Route("/docs.json", docs_json, methods=["GET"]),
        Mount("/docs/assets", StaticFiles(directory=swagger_assets()), name="swagger"),
    ]
