"""The `guard` stage: fit the scope check (pneumo/inference/guard.py) and measure it.

Fitted on the train split's features of the served network (``model.runtime``) and on the real
out-of-scope set under ``data.scope_root`` when there is one, with the committed pixel prior
when ``prior.json`` is there; calibrated on validation; measured on the synthetic probe kinds and
on each source of the set with the classifiers refitted without it (pneumo/evaluation/scope_report.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.inference.guard import Guard, Screening, fit, reasons
from pneumo.workspace import Workspace, atomic_path

log = logging.getLogger(__name__)

Features = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def _feature_source(settings: Any, workspace: Workspace) -> tuple[Features, int, dict]:
    """What the guard reads, computed as the service computes it: (images -> probabilities and
    features), the image size and the features' column segments (without the pixel prior's)."""
    from pneumo.accel import configure_threads
    from pneumo.inference import forward_pass
    from pneumo.inference.runtime import compile_network
    from pneumo.models import load_model
    from pneumo.models.features import feature_segments

    configure_threads(settings.model.threads)
    model, metadata = load_model(workspace.model)
    size, accel, batch = (int(metadata["image_size"]), settings.model.accelerator(),
                          settings.model.batch_size)  # fmt: skip
    # Fitted on the features the served network computes (model.runtime), so the cut-off holds.
    network = compile_network(model, settings.model.runtime, accel, features=True)

    def features(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = forward_pass(network, images, batch, accel=accel, features=True)
        return result.probabilities, result.features  # type: ignore[return-value]

    return features, size, feature_segments(model, size)


def _prior(root: Path, size: int, scope: Any) -> tuple[dict, list[str]]:
    """The committed pixel prior of ``root`` (nothing without one), checked against the set."""
    from pneumo.inference.scope import PRIOR_FILE, load_prior, set_digest

    prior, names, fitted_on = load_prior(root / PRIOR_FILE, size)
    if prior and len(scope) and fitted_on.get("sha256") != set_digest(scope):
        log.warning("%s was fitted on another set than %s holds now: run `pneumo scope-fit` "
                    "and commit it", root / PRIOR_FILE, root)  # fmt: skip
    return prior, names


def guard_stage(
    settings: Any, workspace: Workspace, scope_root: Path | None = None
) -> dict[str, Any]:
    """Fit, save (models/guard.pt), measure (metrics/guard.json, reports/scope.md, MLflow)."""
    from pneumo.data.preprocess import load_arrays
    from pneumo.inference.scope import load_scope_set, pixel_segments, with_pixels
    from pneumo.workspace import sha256_file

    network_features, size, segments = _feature_source(settings, workspace)
    root = workspace.resolve(scope_root or settings.data.scope_root)
    scope = load_scope_set(root, size)
    prior, prior_names = _prior(root, size, scope)
    if prior:
        segments = pixel_segments(segments)

    def features(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probabilities, found = network_features(images)
        return probabilities, with_pixels(found, images, segments)

    train, val = (load_arrays(workspace.arrays(s)) for s in ("train", "val"))
    (_, train_f), (_, val_f) = features(train["images"]), features(val["images"])
    scope_p, scope_f = features(scope.images) if len(scope) else (np.zeros(0), None)
    guard = fit(train_f, train["labels"], val_f, settings.guard.max_val_flag_rate, segments,
                scope, scope_f, (prior, prior_names))  # fmt: skip
    guard.weights_sha256 = sha256_file(workspace.model)
    guard.save(workspace.guard)
    report = _measure(settings, workspace, guard, val, val_f, features, size)
    report["scope"] = _measure_sources(workspace, guard, scope, scope_f, scope_p, train_f, val_f)
    _write(settings, workspace, report, scope)
    return report


def _measure(settings: Any, workspace: Workspace, guard: Guard, val: dict, val_f: np.ndarray,
             features: Features, size: int) -> dict[str, Any]:  # fmt: skip
    """Validation flagged and the synthetic probe kinds."""
    from pneumo.evaluation.guard_probes import NON_RADIOGRAPHS
    from pneumo.evaluation.scope_report import measure_probes

    val_screened = [Screening(size, size, 0.0).reason(p) for p in val["images"]]
    val_reasons = reasons(guard, val_f, val_screened)[1]
    report: dict[str, Any] = {
        "method": "file screen, then the highest of: mahalanobis on block means (pytorch-ood), "
        "a layout gaussian"
        + (", a kind classifier" if guard.kinds else "")
        + (", a pixel prior" if guard.prior else "")
        + " (pneumo/inference/scope.py)",
        "detectors": guard.detectors,
        "cutoff": guard.cutoff,
        "max_val_flag_rate": guard.max_val_flag_rate,
        "val": {
            "n": len(val_reasons),
            "flagged": float(np.mean([r is not None for r in val_reasons])),
        },  # fmt: skip
        "kinds": measure_probes(guard, val["images"], size, settings.guard, features),
    }
    non = [report["kinds"][k] for k in NON_RADIOGRAPHS]
    report["non_radiographs_flagged"] = sum(k["flagged"] * k["n"] for k in non) / sum(
        k["n"] for k in non
    )
    return report


def _measure_sources(workspace: Workspace, guard: Guard, scope: Any, scope_f: Any,
                     scope_p: np.ndarray, train_f: np.ndarray, val_f: np.ndarray) -> dict:  # fmt: skip
    """Each real source held out; whether an unflagged one would be called pneumonia is judged
    by the evaluated decision."""
    from pneumo.decision import Decision
    from pneumo.evaluation.scope_report import measure_sources

    decision = Decision.load(workspace.decision) if workspace.decision.is_file() else None
    return measure_sources(guard, scope, scope_f, scope_p, train_f, val_f, decision)


def _write(settings: Any, workspace: Workspace, report: dict[str, Any], scope: Any) -> None:
    from pneumo.evaluation.scope_report import write_scope_report

    with atomic_path(workspace.guard_metrics) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    workspace.write_summary("guard", {"guard_val_flagged": report["val"]["flagged"]})
    files = [workspace.guard_metrics]
    if len(scope):
        write_scope_report(workspace.root / "reports" / "scope.md", report, scope)
        files.append(workspace.root / "reports" / "scope.md")
    if workspace.run_id.is_file():
        from pneumo import tracking

        tracking.log_to_run(settings, workspace, workspace.run_id.read_text().strip(),
                            guard_run_metrics(report), files, "guard")  # fmt: skip
    log.info("guard: %.1f %% of validation flagged, %.1f %% of non-radiographs; scope set: %d "
             "images", 100 * report["val"]["flagged"], 100 * report["non_radiographs_flagged"],
             len(scope))  # fmt: skip


def guard_run_metrics(report: dict[str, Any]) -> dict[str, float]:
    """The MLflow run's view of metrics/guard.json: one flag rate per probe kind and source."""
    flat = {"guard/val_flagged": report["val"]["flagged"],
            "guard/non_radiographs_flagged": report["non_radiographs_flagged"]}  # fmt: skip
    flat |= {f"guard/probe/{kind}": v["flagged"] for kind, v in report["kinds"].items()}
    for source, v in report["scope"].get("sources", {}).items():
        flat[f"guard/scope/{v['kind']}/{source}/flagged_held_out"] = v["flagged_held_out"]
        flat[f"guard/scope/{v['kind']}/{source}/called_pneumonia_unflagged"] = v[
            "called_pneumonia_unflagged"
        ]
    return {k: float(v) for k, v in flat.items()}
