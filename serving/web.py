"""The clinician web page: static files under serving/static/ and the data they show.

The pages are plain HTML, CSS and JavaScript served by the service itself (no build step, no
CDN: hospital machines may be offline) and talk only to the public API. The model card's
data comes from the files packaged with the served model (pneumo/stored_model.py), never from the
workspace, so the page always describes the model that answers.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from pneumo.stored_model import (
    COMPARISON_FILE,
    EVALUATION_FILE,
    ROC_FILE,
    SHORTCUT_FILE,
    SPLIT_FILE,
    STRESS_FILE,
)

if TYPE_CHECKING:
    from bentoml import Model

STATIC = Path(__file__).resolve().parent / "static"
# Enough points to draw a smooth ROC curve; a larger test split is thinned evenly.
MAX_ROC_POINTS = 500
# Columns of reports/comparison.csv that hold words; the others are numbers or empty.
TEXT_COLUMNS = frozenset({"model", "source", "test_split"})


def _png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def explain_layers(pixels: np.ndarray, heatmap: np.ndarray) -> dict[str, str]:
    """The model's view of the upload and its Grad-CAM colours, as two PNG data URLs.

    The page stacks them with a CSS opacity, which blends exactly like
    :func:`pneumo.inference.gradcam.overlay` with ``alpha`` = the opacity; a DICOM upload, which a
    browser cannot show, is displayed from the first layer.
    """
    from pneumo.inference.gradcam import overlay

    return {
        "image": _png_data_url(Image.fromarray(pixels, mode="L")),
        "heatmap": _png_data_url(Image.fromarray(overlay(pixels, heatmap, alpha=1.0), mode="RGB")),
    }


def _finite(value: Any) -> Any:
    """NaN and infinities -> None, recursively: JSON has no NaN and the page shows a dash."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _number(text: str) -> float | None:
    return float(text) if text != "" else None


def _read_roc(path: Path) -> dict[str, list[float]]:
    with path.open(newline="") as handle:
        rows = [(float(r["fpr"]), float(r["tpr"])) for r in csv.DictReader(handle)]
    if len(rows) > MAX_ROC_POINTS:
        keep = np.unique(np.linspace(0, len(rows) - 1, MAX_ROC_POINTS).round().astype(int))
        rows = [rows[i] for i in keep]
    return {"fpr": [f for f, _ in rows], "tpr": [t for _, t in rows]}


def _read_table(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as handle:
        return [
            {key: value if key in TEXT_COLUMNS else _number(value) for key, value in row.items()}
            for row in csv.DictReader(handle)
        ]


def read_model_card(stored: Model, metrics: dict[str, Any]) -> dict[str, Any]:
    """What a model-store model carries about itself (None for what was not packaged)."""
    model_dir = Path(stored.path)

    def packaged(name: str) -> Path | None:
        path = model_dir / name
        return path if path.is_file() else None

    split, roc, comparison, evaluation, stress, shortcut = (
        packaged(n) for n in (SPLIT_FILE, ROC_FILE, COMPARISON_FILE, EVALUATION_FILE,
                              STRESS_FILE, SHORTCUT_FILE)
    )  # fmt: skip
    meta = stored.info.metadata
    return _finite(
        {
            "registration": {
                "registered_model": meta.get("registered_model"),
                "registered_at": meta.get("registered_at") or None,
                "packaged_at": stored.info.creation_time.isoformat(),
                "threshold_rule": meta.get("threshold_rule") or None,
            },
            # A registry model's metrics.json holds headline numbers only; the full report,
            # when packaged, has the intervals and the confusion matrix.
            "evaluation": json.loads(evaluation.read_text()) if evaluation else metrics,
            "training_data": json.loads(split.read_text()) if split else None,
            "roc": _read_roc(roc) if roc else None,
            "comparison": _served_comparison(_read_table(comparison), evaluation, metrics, meta)
            if comparison
            else None,
            "new_site": _new_site(stress, shortcut),
        }
    )


def _served_comparison(
    rows: list[dict[str, Any]], evaluation: Path | None, metrics: dict[str, Any], meta: Any
) -> list[dict[str, Any]]:
    """The comparison table with pneumo's own row taken from the served model's evaluation:
    reports/comparison.csv is written by `pneumo compare`, which may predate this model."""
    report = json.loads(evaluation.read_text()) if evaluation else metrics
    test = report.get("test") or {}
    others = [r for r in rows if not str(r.get("source", "")).startswith("measured here (pneumo")]
    if not {"accuracy", "roc_auc"} <= set(test):
        return others
    served = {
        "model": f"this model ({meta.get('arch') or 'pneumo'}, served)",
        "source": "measured here (pneumo evaluate, the served model)",
        "test_split": (rows[0].get("test_split") if rows else None),
        **{k: test.get(k) for k in ("accuracy", "sensitivity", "specificity", "f1", "roc_auc")},
        "threshold": meta.get("threshold"),
    }
    at = next((i for i, r in enumerate(others) if r.get("source") == "published"), len(others))
    return [*others[:at], served, *others[at:]]


def _new_site(stress: Path | None, shortcut: Path | None) -> dict[str, Any] | None:
    """What the card shows beside the carved test: the counterfactual battery (the classes trade
    acquisition looks), the stress battery's summary, and the data's shortcut meter."""
    if stress is None and shortcut is None:
        return None
    report = json.loads(stress.read_text()) if stress else {}
    counterfactual = report.get("counterfactual") or {}
    return {
        "counterfactual": {k: counterfactual.get(k) for k in
                           ("normal_as_pneumonia", "pneumonia_as_normal", "swap", "summary",
                            "describes")} if counterfactual else None,
        "stress": report.get("summary"),
        "clean": report.get("clean"),
        "shortcut": json.loads(shortcut.read_text()) if shortcut else None,
    }  # fmt: skip


async def model_card(request: Request) -> Response:
    """GET /model_card: the served model's identity, data, evaluation and comparison."""
    backend = request.app.state.backend()
    card = backend.model_card
    return JSONResponse(
        {
            "model": {**backend.model_info, **card["registration"]},
            "threshold": backend.decision.threshold,
            "image_size": backend.image_size,
            "metrics": _finite(backend.metrics),
            **{key: value for key, value in card.items() if key != "registration"},
        }
    )


def _page(name: str) -> Callable[[Request], Awaitable[Response]]:
    """A page endpoint; revalidated on every visit so a new Bento's page is never stale."""

    async def endpoint(_: Request) -> Response:
        return FileResponse(
            STATIC / name, media_type="text/html", headers={"Cache-Control": "no-cache"}
        )

    return endpoint


def web_routes() -> list[BaseRoute]:
    """The diagnose page at /, the model card at /model-card, their assets under /static."""
    return [
        Route("/", _page("index.html"), methods=["GET"]),
        Route("/model-card", _page("model-card.html"), methods=["GET"]),
        Route("/model_card", model_card, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
