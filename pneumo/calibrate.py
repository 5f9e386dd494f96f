"""Site calibration: adapt the champion's operating point to a new hospital from a small sample.

Radiology teams deploy a model at a new site by measuring it on a labelled sample of that site.
The sample is split by patient into a calibration half (the threshold is re-chosen there by the
configured rule, optionally after a prior-shift correction for the site's declared prevalence and
a re-estimation of BatchNorm statistics on the site's images) and a report half (every metric
and the gate are computed there only), so the images that chose the threshold never grade it.
The result is a new registry version with the champion's weights (unless BatchNorm statistics
were re-estimated), tagged ``site=NAME`` with the alias ``site-NAME``; the champion is untouched.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumo.accel import Accelerator
from pneumo.decision import Decision, choose_threshold
from pneumo.errors import PneumoError
from pneumo.external import ExternalDataError, LabelledImages

log = logging.getLogger(__name__)


class CalibrationError(PneumoError):
    """The site sample cannot calibrate the model (too small, or the gate refused it)."""


@dataclass(frozen=True)
class SiteSplit:
    """Indices of the calibration and report halves of a site sample (patient-disjoint)."""

    calibration: np.ndarray
    report: np.ndarray


def check_sample_size(images: LabelledImages, min_per_class: int) -> None:
    counts = images.counts()
    short = {label: n for label, n in counts.items() if n < min_per_class}
    if short:
        shown = ", ".join(f"{n} {label}" for label, n in short.items())
        raise ExternalDataError(
            f"the site sample has {shown}: calibration needs at least {min_per_class} images of "
            f"each class (half choose the threshold, half report it); add "
            + ", ".join(f"{min_per_class - n} more {label}" for label, n in short.items())
        )


def split_sample(images: LabelledImages, report_fraction: float, seed: int) -> SiteSplit:
    """Patients, per class, go wholly to the calibration or the report half."""
    rng = np.random.default_rng(seed)
    frame = images.frame.reset_index(drop=True)
    report_patients: set[str] = set()
    for _, part in frame.groupby("label"):
        patients = np.array(sorted(part["patient_id"].unique()))
        rng.shuffle(patients)
        cut = max(1, round(len(patients) * report_fraction))
        report_patients.update(patients[:cut])
    in_report = frame["patient_id"].isin(report_patients).to_numpy()
    return SiteSplit(np.flatnonzero(~in_report), np.flatnonzero(in_report))


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
    labels: np.ndarray, probabilities: np.ndarray, base: Decision, settings: Any, log_odds: float
) -> Decision:
    """The threshold re-chosen on the calibration half, on the prior-corrected scale."""
    shifted = Decision(0.5, "prior", prior_log_odds=log_odds).adjust(probabilities)
    chosen = choose_threshold(labels, shifted, settings, tta=base.tta)
    return replace(chosen, referral_margin=base.referral_margin, prior_log_odds=log_odds)
