"""Label-free site adaptation: move the operating point to a new site's prevalence, or say why not.

A hospital has unlabelled images on day one. Their share of pneumonia (the prior) is often far
from the validation split's, and a threshold chosen there then calls too many or too few. This
step estimates the site's prevalence from the network's probabilities on those images alone, with
two well-known estimators: EM on the posteriors (maximum-likelihood label shift, Saerens, Latinne
& Decaestecker 2002), run on probabilities first calibrated on validation (Platt scaling: EM
needs calibrated posteriors), and black-box shift estimation (BBSE, Lipton et al. 2018) from the
validation confusion matrix as a cross-check; each with a bootstrap interval. It moves the
operating point (a prior-shift correction of the logits, so the threshold itself is unchanged)
only when the evidence says the site differs and the move helps: the interval excludes the
validation prevalence, and on the validation split resampled to the estimated prevalence the
moved decision is at least as accurate while keeping sensitivity at ``adapt.min_sensitivity``.
The result is registered like a calibrated site version (alias ``site-NAME``, same weights).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.decision.prevalence import (
    estimate_prevalence,
    fit_calibration,
    judge_move,
    moved_decision,
)
from pneumo.errors import PneumoError
from pneumo.workspace import atomic_path

log = logging.getLogger(__name__)


class AdaptationError(PneumoError):
    """The site's images cannot support a label-free adaptation (too few, too foreign, too vague)."""


def adapt(
    settings: Any, workspace: Any, folder: Path, site: str, alias_or_version: str = "champion"
) -> dict[str, Any]:
    """Adapt a registry version to ``site`` from the unlabelled images in ``folder``.

    Writes ``metrics/site-NAME.json`` and registers a version (same weights) tagged site=NAME
    with the alias site-NAME; refuses (AdaptationError) too few, too foreign or too vague images.
    """
    from pneumo.accel import configure_threads
    from pneumo.evaluation.external import _safe_name
    from pneumo.inference.predictor import collect_images

    cfg = settings.adapt
    site = _safe_name(site)
    configure_threads(settings.model.threads)
    files = collect_images([Path(folder)])
    if len(files) < cfg.min_images:
        raise AdaptationError(
            f"{folder} holds {len(files)} images: a prevalence estimate needs at least "
            f"{cfg.min_images} (adapt.min_images); add images of the site, any layout"
        )
    with tempfile.TemporaryDirectory(prefix="pneumo-adapt-") as tmp:
        report, candidate, example = _assess_site(settings, workspace, files, site,
                                                  alias_or_version, Path(tmp))  # fmt: skip
        _write(workspace.site_metrics(site), report)
        from pneumo.registry.site import register_site_version

        verdict = register_site_version(settings, workspace, candidate, example)
    report["verdict"] = verdict.to_json()
    _write(workspace.site_metrics(site), report)
    return report


def _assess_site(
    settings: Any, workspace: Any, files: list[Path], site: str, source_name: str, tmp: Path
) -> tuple[dict[str, Any], Any, np.ndarray]:
    from pneumo.data.preprocess import load_arrays
    from pneumo.inference import forward_pass
    from pneumo.registry.site import SiteCandidate
    from pneumo.stored_model import DECISION_FILE, GUARD_FILE, MODEL_FILE

    cfg = settings.adapt
    source = tmp / "source"
    info, predictor, pixels, readable, assessed = _screened(settings, workspace, files,
                                                            source_name, source)  # fmt: skip
    flagged = float(assessed.out_of_distribution.mean()) if readable.any() else 1.0
    base = predictor.decision
    batch, tta, accel = settings.model.batch_size, base.tta, predictor.accel
    raw = forward_pass(predictor.network, pixels[readable], batch, tta, accel).probabilities
    site_raw = raw[~assessed.out_of_distribution]
    val = load_arrays(workspace.arrays("val"))
    val_raw = forward_pass(predictor.network, val["images"], batch, tta, accel).probabilities
    val_p = base.adjust(val_raw)
    calibration = fit_calibration(val["labels"], val_p)
    estimate = estimate_prevalence(base.adjust(site_raw), calibration, val["labels"], val_p,
                                   base.threshold, cfg.bootstrap_samples, seed=cfg.seed)  # fmt: skip
    if estimate.width > cfg.max_interval_width:
        raise AdaptationError(
            f"the site's prevalence is {estimate.em:.2f} with a 95 % interval "
            f"{estimate.em_interval[0]:.2f}-{estimate.em_interval[1]:.2f}, wider than "
            f"adapt.max_interval_width {cfg.max_interval_width}: add images of the site"
        )
    moved = moved_decision(base, calibration, estimate.em)
    move, reasons, simulated = judge_move(estimate, base, moved, val["labels"], val_p,
                                          cfg.min_sensitivity, calibration.source_prior,
                                          cfg.seed)  # fmt: skip
    decision = moved if move else replace(base, rule=f"{base.rule}+adapt-kept")
    decision.save(tmp / DECISION_FILE)
    report = {
        "site": site, "images": len(files), "unreadable": int((~readable).sum()),
        "flagged": flagged, "adapted_from": int(info["version"]),
        "estimate": {**asdict(estimate), "reference_prevalence": calibration.source_prior},
        "calibration": asdict(calibration), "moved": move, "reasons": reasons,
        "threshold": base.threshold, "prior_log_odds": decision.prior_log_odds,
        "positive_rate": {"validation_decision": float(np.mean(base.positive(base.adjust(site_raw)))),
                          "adapted_decision": float(np.mean(decision.positive(decision.adjust(site_raw))))},
        "simulated_sites": simulated,
    }  # fmt: skip
    guard = source / GUARD_FILE
    candidate = SiteCandidate(
        site=site, model=source / MODEL_FILE, decision=tmp / DECISION_FILE,
        guard=guard if guard.is_file() else None, calibrated_from=int(info["version"]),
        # What the registered decision keeps on simulated sites (the moved one, or the same).
        site_metrics=simulated["adapted" if move else "validation"],
        reference_metrics=simulated["validation"],
        sample_sha256=_sha256_of_files(files), report_files=[workspace.site_metrics(site)],
        facts={"adapted_label_free": "true", "site_prevalence": f"{estimate.em:.4f}",
               "site_prevalence_interval": f"{estimate.em_interval[0]:.4f}-{estimate.em_interval[1]:.4f}",
               "site_prevalence_bbse": f"{estimate.bbse:.4f}", "moved": str(move).lower()},
        how="label-free: prevalence estimated from unlabelled images; the figures are the "
        "validation split resampled to that prevalence",
    )  # fmt: skip
    return report, candidate, pixels[readable][:2]


def _screened(
    settings: Any, workspace: Any, files: list[Path], source_name: str, source: Path
) -> tuple[dict[str, Any], Any, np.ndarray, np.ndarray, Any]:
    """The source version (downloaded to ``source``), the site's pixels and the guard's look at
    the readable ones; refuses a site whose images the guard mostly flags."""
    from pneumo.data.preprocess import decode_files
    from pneumo.inference.predictor import Predictor
    from pneumo.registry import download_version
    from pneumo.stored_model import DECISION_FILE, GUARD_FILE, MODEL_FILE

    info = download_version(settings, workspace, source_name, source)
    predictor = Predictor.from_files(source / MODEL_FILE, source / DECISION_FILE,
                                     settings.model.accelerator(), settings.model.runtime,
                                     source / GUARD_FILE)  # fmt: skip
    pixels, errors = decode_files([str(f) for f in files], predictor.image_size,
                                  settings.preprocess.workers, "site images")  # fmt: skip
    readable = np.array([e is None for e in errors])
    assessed = predictor.assess(pixels[readable], batch_size=settings.model.batch_size)
    flagged = float(assessed.out_of_distribution.mean()) if readable.any() else 1.0
    limit = settings.adapt.max_flag_rate
    if flagged > limit:
        raise AdaptationError(
            f"the guard flags {flagged:.0%} of the site's images as unlike the training "
            f"radiographs (allowed {limit:.0%}, adapt.max_flag_rate): the model is "
            "not fit for this site's images, and its probabilities cannot estimate anything"
        )
    return info, predictor, pixels, readable, assessed


def _sha256_of_files(files: list[Path]) -> str:
    import hashlib

    from pneumo.workspace import sha256_file

    return hashlib.sha256("".join(sorted(sha256_file(f) for f in files)).encode()).hexdigest()


def _write(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=float) + "\n")
