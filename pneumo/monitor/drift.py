"""A window of the prediction log against the reference: drift, rates, live performance, verdict.

Drift is Evidently's (one ``ValueDrift`` per input statistic and for the probability, with
``monitor.drift_method``), rates are counts, live sensitivity/specificity/accuracy and their
bootstrap intervals come from :mod:`pneumo.decision.metrics`. ``monitor.*`` thresholds turn the figures
into ``ok`` / ``warn`` / ``alert``, each reason in words; a window with fewer than
``monitor.min_predictions`` distinct images is ``insufficient``: "not enough data (N < min)".

Requests for the same image (the web page asks /predict and /explain for each file) count once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from pneumo.data.kermany import LABEL_INDEX
from pneumo.decision.metrics import binary_metrics, bootstrap_intervals
from pneumo.monitor.stats import STAT_COLUMNS, log_rates

log = logging.getLogger(__name__)

SEVERITY = {"ok": 0, "warn": 1, "alert": 2}
LIVE_METRICS = ("sensitivity", "specificity", "accuracy")


@dataclass
class Assessment:
    """The verdict's figures (JSON-ready) and Evidently's snapshot (its HTML report)."""

    summary: dict[str, Any]
    snapshot: Any | None


def distinct_images(window: pd.DataFrame) -> pd.DataFrame:
    """One row per image (the first request that sent it), with its latest review."""
    return window.drop_duplicates("image_sha256", keep="first").reset_index(drop=True)


def drift_report(
    current: pd.DataFrame, reference: pd.DataFrame, method: str, threshold: float | None
) -> tuple[dict[str, dict[str, Any]], Any]:
    """Evidently's drift per input statistic and for the probability, and its snapshot."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift

    numeric = [*STAT_COLUMNS, "probability"]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=["label"])
    metrics = [ValueDrift(column=c, method=method, threshold=threshold) for c in numeric]
    report = Report([*metrics, ValueDrift(column="label")], include_tests=True)
    columns = [*numeric, "label"]
    snapshot = report.run(
        Dataset.from_pandas(current[columns].reset_index(drop=True), data_definition=definition),
        Dataset.from_pandas(reference[columns].reset_index(drop=True), data_definition=definition),
    )
    results: dict[str, dict[str, Any]] = {}
    for result in snapshot.metric_results.values():
        params = result.metric_value_location.metric.params
        results[params["column"]] = {
            "score": float(result.value),
            "method": params.get("method"),
            "threshold": params.get("threshold"),
            "drifted": any(test.status.name == "FAIL" for test in result.tests),
        }
    return results, snapshot


def live_performance(window: pd.DataFrame, evaluate: Any, min_feedback: int) -> dict[str, Any]:
    """Sensitivity, specificity and accuracy on the reviewed images, with bootstrap intervals
    (each image resampled on its own: the log knows no patients)."""
    reviewed = window[window["reviewed_label"].notna()]
    out: dict[str, Any] = {"n": len(reviewed), "min": min_feedback}
    if len(reviewed) < min_feedback:
        out["note"] = f"not enough feedback ({len(reviewed)} < {min_feedback})"
        return out
    truth = reviewed["reviewed_label"].map(LABEL_INDEX).to_numpy()
    thresholds = reviewed["threshold"].unique()
    if len(thresholds) == 1:
        p, threshold = reviewed["probability"].to_numpy(float), float(thresholds[0])
    else:  # several models in the window: score their calls, not their probabilities
        p, threshold = reviewed["label"].map(LABEL_INDEX).to_numpy(float), 0.5
    values = binary_metrics(truth, p, threshold)
    intervals = bootstrap_intervals(
        truth,
        p,
        reviewed["request_id"].to_numpy(),
        threshold,
        evaluate.bootstrap_samples,
        evaluate.ci_level,
        evaluate.seed,
    )
    out["metrics"] = {name: values[name] for name in LIVE_METRICS}
    out["intervals"] = {name: intervals.get(name) for name in LIVE_METRICS}
    out["agreement"] = float((reviewed["reviewed_label"] == reviewed["label"]).mean())
    return out


def live_prevalence(
    current: pd.DataFrame, reference: pd.DataFrame, about: dict[str, Any]
) -> dict[str, Any]:
    """The window's pneumonia prevalence estimated from its (unlabelled) answers, the way
    `pneumo adapt` estimates a site's: EM on posteriors Platt-calibrated on the reference
    (validation) split, BBSE as a cross-check, bootstrap intervals. Flagged images are left out."""
    from pneumo.decision.prevalence import estimate_prevalence, fit_calibration

    labels = reference["true_label"].map(LABEL_INDEX).to_numpy()
    known = reference["probability"].notna().to_numpy()
    window = current[~current["out_of_distribution"].astype(bool)]["probability"].dropna()
    if len(window) < 20 or len(np.unique(labels[known])) < 2:
        return {"note": "too few answers to estimate"}
    calibration = fit_calibration(labels[known], reference["probability"].to_numpy()[known])
    threshold = float(about.get("threshold", 0.5))
    estimate = estimate_prevalence(window.to_numpy(), calibration, labels[known],
                                   reference["probability"].to_numpy()[known], threshold)  # fmt: skip
    return {"estimate": estimate.em, "interval": list(estimate.em_interval),
            "bbse": estimate.bbse, "reference": calibration.source_prior, "n": estimate.n}  # fmt: skip


def assess(
    window: pd.DataFrame,
    reference: pd.DataFrame,
    about: dict[str, Any],
    settings: Any,
    start: datetime,
    end: datetime,
) -> Assessment:
    """The monitor's verdict on a window of the log (``settings``: the whole Settings)."""
    monitor = settings.monitor
    current = distinct_images(window)
    summary: dict[str, Any] = {
        "window": {"start": start.isoformat(), "end": end.isoformat()},
        "n": len(current),
        "requests": len(window),
        "reference": about,
        "models": sorted(set(window.get("model_version", pd.Series(dtype=str)).dropna())),
    }
    if len(current) < monitor.min_predictions:
        reason = f"not enough data ({len(current)} < {monitor.min_predictions})"
        return Assessment({**summary, "status": "insufficient", "reasons": [reason]}, None)
    drift, snapshot = drift_report(
        current, reference, monitor.drift_method, monitor.drift_threshold
    )
    summary["input_drift"] = {c: drift[c] for c in STAT_COLUMNS}
    summary["input_drift_share"] = float(np.mean([drift[c]["drifted"] for c in STAT_COLUMNS]))
    now, then = log_rates(current), log_rates(reference)
    rates = {name: {"window": now[name], "reference": then[name]} for name in now}
    summary["prediction_drift"] = {
        "probability": drift["probability"],
        "label": drift["label"],
        "positive_rate": rates["positive_rate"],
    }
    summary["ood_rate"] = rates["ood_rate"]
    summary["referral_rate"] = rates["referral_rate"]
    summary["prevalence"] = live_prevalence(current, reference, about)
    summary["live"] = live_performance(current, settings.evaluate, monitor.min_feedback)
    shas = set(window["model_sha256"].dropna())
    summary["reference_model_matches"] = shas <= {about.get("model_sha256")}
    status, reasons = drift_verdict(summary, settings)
    return Assessment({**summary, "status": status, "reasons": reasons}, snapshot)


Finding = tuple[str, str]  # (warn | alert, what raised it, in words)


def _graded(value: float, warn: float, alert: float, text: str) -> list[Finding]:
    if value > alert:
        return [("alert", f"{text} (alert above {alert:g})")]
    if value > warn:
        return [("warn", f"{text} (warn above {warn:g})")]
    return []


def drift_verdict(summary: dict[str, Any], settings: Any) -> tuple[str, list[str]]:
    """ok / warn / alert and every reason that raised it, in words."""
    findings = [
        *_input_findings(summary, settings.monitor),
        *_prevalence_findings(summary.get("prevalence") or {}, settings.monitor),
        *_output_findings(summary, settings.monitor),
        *_live_findings(summary["live"], settings.registry),
    ]
    if not summary.get("reference_model_matches", True):
        findings.append(("warn", "the window holds another model than the reference's: "
                                 "prediction drift compares different models"))  # fmt: skip
    if not findings:
        return "ok", ["no drift, rates within limits"]
    status = max((level for level, _ in findings), key=SEVERITY.__getitem__)
    return status, [f"{level}: {text}" for level, text in findings]


def _input_findings(summary: dict[str, Any], monitor: Any) -> list[Finding]:
    """The inputs' statistics and the positive rate."""
    drifted = [c for c, v in summary["input_drift"].items() if v["drifted"]]
    findings = _graded(
        summary["input_drift_share"],
        monitor.input_drift_warn_share - 1e-9,
        monitor.input_drift_alert_share - 1e-9,
        f"input drift in {len(drifted)} of {len(STAT_COLUMNS)} statistics: {', '.join(drifted)}",
    )
    rates = summary["prediction_drift"]["positive_rate"]
    findings += _graded(
        abs(rates["window"] - rates["reference"]),
        monitor.positive_rate_warn,
        monitor.positive_rate_alert,
        f"positive rate {rates['window']:.1%} vs {rates['reference']:.1%} on the validation split",
    )
    return findings


def _output_findings(summary: dict[str, Any], monitor: Any) -> list[Finding]:
    """The probabilities' drift and the OOD and referral rates."""
    findings: list[Finding] = []
    probability = summary["prediction_drift"]["probability"]
    if probability["drifted"]:
        findings.append(("warn", f"the probabilities drifted ({probability['method']} "
                                 f"{probability['score']:.3g}, threshold "
                                 f"{probability['threshold']:g})"))  # fmt: skip
    limits = {
        "ood_rate": (monitor.ood_rate_warn, monitor.ood_rate_alert),
        "referral_rate": (monitor.referral_rate_warn, monitor.referral_rate_alert),
    }
    for name, (warn, alert) in limits.items():
        rate = summary[name]
        text = f"{name.replace('_', ' ')} {rate['window']:.1%} vs {rate['reference']:.1%}"
        findings += _graded(rate["window"] - rate["reference"], warn, alert,
                            text + " on the validation split")  # fmt: skip
    return findings


def _prevalence_findings(prevalence: dict[str, Any], monitor: Any) -> list[Finding]:
    if "estimate" not in prevalence:
        return []
    low, high = prevalence["interval"]
    away = max(low - prevalence["reference"], prevalence["reference"] - high, 0.0)
    return _graded(away, monitor.prevalence_warn, monitor.prevalence_alert,
                   f"estimated pneumonia prevalence {prevalence['estimate']:.1%} "
                   f"[{low:.1%}-{high:.1%}] vs {prevalence['reference']:.1%} on the validation "
                   "split: the operating point may no longer fit; adapt it with `pneumo adapt "
                   "FOLDER --site NAME` on the window's images (kept when monitor.keep_images is "
                   "on: `pneumo feedback export`)")  # fmt: skip


def _live_findings(live: dict[str, Any], registry: Any) -> list[Finding]:
    """Reviewed predictions against the gate's floors: alert when the interval is below."""
    findings: list[Finding] = []
    for metric, floor in (
        ("sensitivity", registry.min_sensitivity),
        ("specificity", registry.min_specificity),
    ):
        value = live.get("metrics", {}).get(metric)
        interval = (live.get("intervals") or {}).get(metric) or [value, value]
        if value is None or np.isnan(value):
            continue
        if interval[1] is not None and interval[1] < floor:
            findings.append(("alert", f"live {metric} {value:.1%} (interval up to "
                                      f"{interval[1]:.1%}) below the gate's floor {floor:.0%}"))  # fmt: skip
        elif value < floor:
            findings.append(("warn", f"live {metric} {value:.1%} below the gate's floor "
                                     f"{floor:.0%}"))  # fmt: skip
    return findings
