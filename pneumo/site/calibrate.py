"""Site calibration: adapt the champion's operating point to a new hospital from a small sample.

Radiology teams deploy a model at a new site by measuring it on a labelled sample of that site.
A screening service may not trade sensitivity away silently, so the site threshold is the most
specific one that keeps sensitivity at ``calibrate.min_sensitivity``, held on the lower side of
its confidence interval where the sample has enough pneumonia cases to allow it (optionally after
a prior-shift correction for the site's prevalence and a re-estimation of BatchNorm statistics).
Every image both chooses and grades, but never at once: patient-grouped cross-fitting
(``calibrate.folds``) chooses each fold's threshold on the other folds, and the report is made of
those out-of-fold calls, before and after, with patient-bootstrap intervals. The registered
threshold is the rule applied to the whole sample. The result is a new registry version with the
champion's weights (unless BatchNorm statistics were re-estimated), tagged ``site=NAME`` with the
alias ``site-NAME``; the champion is untouched.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumo.accel import Accelerator
from pneumo.decision import Decision, floor_threshold
from pneumo.decision.metrics import point_metrics
from pneumo.decision.prevalence import logit
from pneumo.errors import PneumoError
from pneumo.evaluation.external import ExternalDataError, LabelledImages
from pneumo.inference import predict_proba
from pneumo.models import save_model
from pneumo.registry.site import SiteCandidate, register_site_version
from pneumo.workspace import atomic_path

log = logging.getLogger(__name__)


class CalibrationError(PneumoError):
    """The site sample cannot calibrate the model (too small, or the gate refused it)."""


def check_sample_size(images: LabelledImages, min_per_class: int) -> None:
    counts = images.counts()
    short = {label: n for label, n in counts.items() if n < min_per_class}
    if short:
        shown = ", ".join(f"{n} {label}" for label, n in short.items())
        raise ExternalDataError(
            f"the site sample has {shown}: calibration needs at least {min_per_class} images of "
            f"each class (every fold must hold both classes to choose and to report); add "
            + ", ".join(f"{min_per_class - n} more {label}" for label, n in short.items())
        )


def patient_folds(images: LabelledImages, folds: int, seed: int) -> list[np.ndarray]:
    """Indices of each fold: whole patients, both classes in every fold (scikit-learn)."""
    from sklearn.model_selection import StratifiedGroupKFold

    frame = images.frame.reset_index(drop=True)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [test for _, test in splitter.split(frame, images.labels, frame["patient_id"])]


def prior_log_odds(site_prevalence: float | None, model_prevalence: float) -> float:
    """The logit shift that moves the model's prior (what it was trained to expect) to the site's."""
    if site_prevalence is None:
        return 0.0

    def log_odds(p: float) -> float:
        return math.log(p / (1 - p))

    return log_odds(site_prevalence) - log_odds(model_prevalence)


@torch.no_grad()
def reestimate_batchnorm(
    model: nn.Module, images: np.ndarray, accel: Accelerator, batch_size: int = 64
) -> nn.Module:
    """A copy of ``model`` whose BatchNorm statistics are the site's (AdaBN); no label is used."""
    from pneumo.data.transforms import standardize
    from pneumo.inference import prepare

    adapted = prepare(copy.deepcopy(model), accel)
    norms = [m for m in adapted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise CalibrationError("the model has no BatchNorm layers to re-estimate")
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over every site batch
    adapted.eval()
    for norm in norms:
        norm.train()
    for start in range(0, len(images), batch_size):
        pixels = torch.from_numpy(images[start : start + batch_size]).unsqueeze(1)
        adapted(standardize(pixels.to(accel.device)))
    return adapted.eval().cpu()


def site_decision(
    labels: np.ndarray, probabilities: np.ndarray, base: Decision, cfg: Any, level: float,
    log_odds: float,
) -> tuple[Decision, bool]:  # fmt: skip
    """The most specific threshold under the sensitivity floor, on the prior-corrected scale;
    and whether the floor held on the interval's lower side."""
    shifted = Decision(0.5, "prior", prior_log_odds=log_odds).adjust(probabilities)
    threshold, on_interval = floor_threshold(labels, shifted, cfg.min_sensitivity, level)
    predicted = shifted >= threshold
    decision = Decision(
        threshold=threshold, rule=f"min_sensitivity {cfg.min_sensitivity:g}",
        val_sensitivity=float(predicted[labels == 1].mean()),
        val_specificity=float((~predicted[labels == 0]).mean()) if (labels == 0).any() else math.nan,
        referral_margin=base.referral_margin, tta=base.tta, prior_log_odds=log_odds,
    )  # fmt: skip
    return decision, on_interval


def model_prevalence(settings: Any, train_labels: np.ndarray) -> float:
    """The prior the network learnt: balanced by the sampler or the loss weights, else the data's."""
    if settings.train.class_balance in ("sampler", "weights"):
        return 0.5
    return float(np.mean(train_labels))


def calibrate(
    settings: Any, workspace: Any, folder: Path, site: str, alias_or_version: str = "champion"
) -> dict[str, Any]:
    """Calibrate a registry version for ``site`` on the labelled sample in ``folder``.

    Writes ``metrics/site-NAME.json`` and registers the result (see :mod:`pneumo.registry.site`).
    A refused sample or a failed gate leaves every existing alias as it was.
    """
    from pneumo.accel import configure_threads
    from pneumo.data.preprocess import decode_many
    from pneumo.evaluation.external import _safe_name, check_no_overlap, load_labelled_folder
    from pneumo.inference.predictor import Predictor
    from pneumo.registry import download_version
    from pneumo.stored_model import DECISION_FILE, GUARD_FILE, MODEL_FILE

    cfg = settings.calibrate
    site = _safe_name(site)
    configure_threads(settings.model.threads)
    images = load_labelled_folder(folder, settings.preprocess.workers)
    check_sample_size(images, cfg.min_per_class)
    check_no_overlap(images, workspace)
    folds = patient_folds(images, cfg.folds, cfg.seed)
    accel = settings.model.accelerator()
    with tempfile.TemporaryDirectory(prefix="pneumo-calibrate-") as tmp:
        source, adapted_dir = Path(tmp) / "source", Path(tmp) / "adapted"
        info = download_version(settings, workspace, alias_or_version, source)
        reference = Predictor.from_files(source / MODEL_FILE, source / DECISION_FILE, accel,
                                         settings.model.runtime, source / GUARD_FILE)  # fmt: skip
        pixels = decode_many(list(images.frame["path"]), reference.image_size,
                             settings.preprocess.workers, "site sample")  # fmt: skip
        weights = source / MODEL_FILE
        if cfg.recalibrate_batchnorm:
            weights = adapted_dir / MODEL_FILE
            adapted = reestimate_batchnorm(reference.model, pixels, accel)  # no label is read
            save_model(adapted, weights, reference.metadata)
        report, decision = _calibrated_report(settings, workspace, images, folds, reference,
                                              weights, pixels)  # fmt: skip
        report.update(site=site, calibrated_from=int(info["version"]))
        decision.save(adapted_dir / DECISION_FILE)
        _write(workspace.site_metrics(site), report)
        guard = source / GUARD_FILE
        candidate = SiteCandidate(
            site=site, model=weights, decision=adapted_dir / DECISION_FILE,
            guard=guard if guard.is_file() else None, calibrated_from=int(info["version"]),
            site_metrics=point_metrics(report["calibrated"]),
            reference_metrics=point_metrics(report["reference"]),
            sample_sha256=sha256_of_sample(images), report_files=[workspace.site_metrics(site)],
            facts={"site_counts": json.dumps(images.counts()), "site_prevalence": str(cfg.prevalence),
                   "batchnorm_reestimated": str(cfg.recalibrate_batchnorm).lower()},
        )  # fmt: skip
        verdict = register_site_version(settings, workspace, candidate, pixels[:2])
    report["verdict"] = verdict.to_json()
    _write(workspace.site_metrics(site), report)
    return report


def _calibrated_report(
    settings: Any,
    workspace: Any,
    images: LabelledImages,
    folds: list[np.ndarray],
    reference: Any,
    weights: Path,
    pixels: np.ndarray,
) -> tuple[dict[str, Any], Decision]:
    """The site decision (the whole sample) and, out of fold, both versions' calls with intervals."""
    from pneumo.data.preprocess import load_arrays
    from pneumo.evaluation.evaluate import score_split
    from pneumo.models import load_model

    cfg, level = settings.calibrate, settings.evaluate.ci_level
    model, _ = load_model(weights)
    probabilities = predict_proba(model, pixels, settings.model.batch_size, reference.decision.tta,
                                  reference.accel)  # fmt: skip
    labels, patients = images.labels, images.frame["patient_id"].to_numpy()
    subtypes = images.frame["subtype"].to_numpy()
    train_labels = load_arrays(workspace.arrays("train"))["labels"]
    shift = prior_log_odds(cfg.prevalence, model_prevalence(settings, train_labels))
    # Out of fold: each fold's calls come from the threshold the other folds chose. On the
    # margin's scale (logit p - logit threshold) they all read at 0.5.
    margins = np.empty(len(labels))
    held = []
    for fold in folds:
        rest = np.setdiff1d(np.arange(len(labels)), fold)
        chosen, on_interval = site_decision(labels[rest], probabilities[rest], reference.decision,
                                            cfg, level, shift)  # fmt: skip
        held.append(on_interval)
        adjusted = chosen.adjust(probabilities[fold])
        margins[fold] = logit(adjusted) - logit(np.array([chosen.threshold]))[0]
    out_of_fold = Decision(0.5, "cross-fitted", referral_margin=reference.decision.referral_margin)
    calibrated = score_split(labels, 1 / (1 + np.exp(-margins)), patients, out_of_fold,
                       settings.evaluate, subtypes, name="calibrated")  # fmt: skip
    decision, on_interval = site_decision(labels, probabilities, reference.decision, cfg, level,
                                          shift)  # fmt: skip
    calibrated["threshold"] = decision.to_json()
    as_is = reference.probabilities(pixels, settings.model.batch_size)
    before = score_split(labels, as_is, patients, reference.decision, settings.evaluate,
                   name="reference")  # fmt: skip
    report = {
        "counts": images.counts(), "folds": len(folds), "images": int(len(labels)),
        "calibration_images": int(len(labels)), "report_images": int(len(labels)),
        "min_sensitivity": cfg.min_sensitivity,
        "floor_held_on_interval": bool(on_interval and all(held)),
        "prevalence": cfg.prevalence, "prior_log_odds": shift,
        "recalibrated_batchnorm": cfg.recalibrate_batchnorm,
        "reference_threshold": reference.decision.threshold, **calibrated,
        "reference": before["reference"],
    }  # fmt: skip
    if not report["floor_held_on_interval"]:
        log.warning("the sample has too few pneumonia cases to hold sensitivity %.2f on the lower "
                    "side of its interval: the floor holds on the point estimate only",
                    cfg.min_sensitivity)  # fmt: skip
    return report, decision




def _write(path: Path, report: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")


def sha256_of_sample(images: LabelledImages) -> str:
    """The identity of a sample: its images' contents, in a stable order."""
    import hashlib

    return hashlib.sha256("".join(sorted(images.frame["sha256"])).encode()).hexdigest()
