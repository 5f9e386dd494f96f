"""Acquisition-shift stress test: the validation split as another hospital might send it.

A carved test split comes from the same machines as training, so it cannot show what happens at
a new site. This stage re-creates the validation radiographs under a fixed, seeded battery of
shifts (exposure, contrast, tone curve, compression, resolution, blur, noise, field of view,
aspect, collimation, burned-in markers), each at two severities, and scores the model on every
version at its validation-chosen threshold (the battery: :mod:`pneumo.evaluation.shifts`).

Those shifts change both classes alike, so they cannot see a network that reads the scanner
instead of the lungs: in Kermany's release the normal radiographs are sharper than the pneumonia
ones (edge energy alone separates the classes, validation AUC ~0.8). The counterfactual battery
(:func:`counterfactual_report`) gives each class the other class's acquisition look instead: every
normal radiograph is blurred to the edge energy a pneumonia radiograph at the same rank has, every
pneumonia radiograph sharpened to a normal one's. A network that learnt the lungs keeps its
specificity and sensitivity; one that learnt the look loses them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from pneumo.data.shortcut import edge_energy
from pneumo.decision.metrics import binary_metrics
from pneumo.decision.prevalence import logit
from pneumo.evaluation.shifts import (
    SEVERITIES,
    SHIFTS,
    on_every_core,
    shifted_images,
    working_copies,
)
from pneumo.workspace import atomic_path

log = logging.getLogger(__name__)

# What each stress figure reports per shift (at the validation-chosen threshold).
REPORTED = ("roc_auc", "sensitivity", "specificity", "accuracy")
# Sees each scored set: (name, model pixels, probabilities) (pneumo/evaluation/precision.py).
Observer = Callable[[str, np.ndarray, np.ndarray], None]


def stress_report(
    predict: Callable[[np.ndarray], np.ndarray],
    working: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    image_size: int,
    seed: int = 0,
    collected: dict[str, np.ndarray] | None = None,
    observe: Observer | None = None,
) -> dict[str, Any]:
    """Score ``predict`` on the clean working copies and on every shift and severity; with
    ``collected``, keep each set's probabilities there (``clean``, ``NAME@SEVERITY``); with
    ``observe``, show it each set's images and probabilities (the counterfactual swaps too)."""
    from pneumo.data.preprocess import decode_radiograph

    def scored(images: np.ndarray, name: str) -> dict[str, float]:
        probabilities = predict(images)
        if observe is not None:
            observe(name, images, probabilities)
        if collected is not None:
            collected[name] = probabilities
        values = binary_metrics(labels, probabilities, threshold)
        return {name: values[name] for name in REPORTED}

    clean = np.stack([decode_radiograph(Image.fromarray(i), image_size) for i in working])
    report: dict[str, Any] = {"threshold": threshold, "n": len(labels),
                              "clean": scored(clean, "clean")}  # fmt: skip
    shifts: dict[str, Any] = {}
    for shift in SHIFTS:
        shifts[shift.name] = {"describes": shift.describes}
        for severity in SEVERITIES:
            images = shifted_images(working, shift, severity, image_size, seed)
            shifts[shift.name][str(severity)] = {
                "level": shift.levels[severity - 1],
                **scored(images, f"{shift.name}@{severity}"),
            }
        log.info("stress %s: ROC-AUC %.4f / %.4f", shift.name,
                 shifts[shift.name]["1"]["roc_auc"], shifts[shift.name]["2"]["roc_auc"])  # fmt: skip
    report["shifts"] = shifts
    report["summary"] = summarise(shifts)
    report["counterfactual"] = counterfactual_report(predict, working, clean, labels, threshold,
                                                     image_size, collected, observe)  # fmt: skip
    return report


def summarise(shifts: dict[str, Any]) -> dict[str, Any]:
    """Mean and worst case over every shift and severity, naming the worst."""
    rows = [
        (f"{name}@{severity}", values[str(severity)])
        for name, values in shifts.items()
        for severity in SEVERITIES
    ]
    summary: dict[str, Any] = {}
    for metric in REPORTED:
        numbers = [row[metric] for _, row in rows]
        worst = int(np.nanargmin(numbers))
        summary[f"mean_{metric}"] = float(np.nanmean(numbers))
        summary[f"worst_{metric}"] = float(numbers[worst])
        summary[f"worst_{metric}_shift"] = rows[worst][0]
    return summary


DETAIL_FILE = "detail.json"


def summary_of(report: dict[str, Any]) -> dict[str, Any]:
    """What metrics/stress.json holds: the headline figures that the gate and the ablation report
    read (metrics/summary/stress.json has two for `dvc metrics show`). Every shift, swap, rule
    and simulated site is in plots/stress/."""
    counterfactual = report.get("counterfactual") or {}
    return {
        "threshold": report["threshold"], "n": report["n"], "clean": report["clean"],
        "summary": report["summary"],
        **({"counterfactual": {"summary": counterfactual["summary"]}} if counterfactual else {}),
        **({"recommended_rule": report["operating_points"]["recommended"]}
           if "operating_points" in report else {}),
    }  # fmt: skip


def write_outputs(report: dict[str, Any], metrics_path: Path, plots_dir: Path) -> list[Path]:
    """metrics/stress.json (the summary), plots/stress/detail.json (everything), a CSV of every
    shift and swap for `dvc plots`, and one figure."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(metrics_path) as tmp:
        tmp.write_text(json.dumps(summary_of(report), indent=2) + "\n")
    with atomic_path(plots_dir / DETAIL_FILE) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    rows = [
        {"shift": name, "severity": severity, "kind": "both classes alike",
         **values[str(severity)]}
        for name, values in report["shifts"].items()
        for severity in SEVERITIES
    ]  # fmt: skip
    counterfactual = report.get("counterfactual") or {}
    rows += [
        {"shift": f"cf_{name}", "severity": severity, "kind": "counterfactual",
         **counterfactual[name][str(severity)]}
        for name in COUNTERFACTUALS if name in counterfactual
        for severity in SEVERITIES
    ]  # fmt: skip
    import pandas as pd

    frame = pd.DataFrame(rows)
    # One label per bar: `dvc plots` would otherwise stack the two severities of a shift.
    frame.insert(0, "case", frame["shift"] + "@" + frame["severity"].astype(str))
    plots_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(plots_dir / "stress.csv") as tmp:
        frame.to_csv(tmp, index=False)
    from pneumo.evaluation import plots

    figure = plots.stress_chart(plots_dir / "stress.png", frame, report["clean"])
    return [metrics_path, plots_dir / DETAIL_FILE, plots_dir / "stress.csv", figure]


# ---- Counterfactual acquisition swaps ---------------------------------------------------------

COUNTERFACTUALS = ("normal_as_pneumonia", "pneumonia_as_normal", "swap")
COUNTERFACTUAL_DESCRIBES = {
    "normal_as_pneumonia": "normal radiographs given the pneumonia class's sharpness (specificity)",
    "pneumonia_as_normal": "pneumonia radiographs given the normal class's sharpness (sensitivity)",
    "swap": "both classes given the other class's sharpness (ROC-AUC)",
}


def _blurred(image: np.ndarray, sigma: float) -> np.ndarray:
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(sigma)))


def _sharpened(image: np.ndarray, amount: float) -> np.ndarray:
    unsharp = ImageFilter.UnsharpMask(radius=1.5, percent=round(100 * amount), threshold=0)
    return np.asarray(Image.fromarray(image).filter(unsharp))


def match_edge_energy(image: np.ndarray, target: float, steps: int = 12) -> np.ndarray:
    """``image`` blurred (or unsharp-masked) until its edge energy is ``target``, by bisection."""
    current = edge_energy(image)
    if abs(math.log(target / current)) < 0.01:
        return image
    change, high = (_blurred, 6.0) if target < current else (_sharpened, 10.0)
    low, best = 0.0, image
    for _ in range(steps):
        middle = (low + high) / 2
        candidate = change(image, middle)
        if (edge_energy(candidate) > target) == (target < current):
            low = middle  # not changed enough yet
        else:
            high = middle
        best = candidate
    return best


def counterfactual_targets(energies: np.ndarray, labels: np.ndarray, severity: int) -> np.ndarray:
    """Each image's target edge energy: the other class's value at the image's rank in its own
    class (quantile mapping). Severity 1 goes all the way to the other class's look; severity 2
    twice as far (in log edge energy): a site whose acquisition differs from the training data's
    as much again as the two classes differ from each other, where a network that reads the look
    shows it clearly (its cue effect grows with the distance, a blind one's stays at 0)."""
    targets = np.empty(len(energies))
    for label in (0, 1):
        own, other = energies[labels == label], np.sort(energies[labels != label])
        ranks = (np.argsort(np.argsort(own)) + 0.5) / len(own)
        matched = np.quantile(other, ranks)
        targets[labels == label] = own * (matched / own) ** severity
    return targets


def counterfactual_images(
    working: np.ndarray, labels: np.ndarray, severity: int, image_size: int
) -> np.ndarray:
    """Every working copy given the other class's acquisition look, decoded to model pixels."""
    from pneumo.data.preprocess import decode_radiograph

    energies = np.array([edge_energy(image) for image in working])
    targets = counterfactual_targets(energies, labels, severity)

    def one(index: int) -> np.ndarray:
        swapped = match_edge_energy(working[index], targets[index])
        return decode_radiograph(Image.fromarray(swapped), image_size)

    return np.stack(on_every_core(one, len(working)))


def counterfactual_report(
    predict: Callable[[np.ndarray], np.ndarray],
    working: np.ndarray,
    clean: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    image_size: int,
    collected: dict[str, np.ndarray] | None = None,
    observe: Observer | None = None,
) -> dict[str, Any]:
    """Sensitivity, specificity and ROC-AUC when the classes trade acquisition looks.

    ``cue_effect`` (logits) is how far the network moves towards the class whose look an image
    was given, averaged over both classes: 0 for a network blind to the look.
    """
    p_clean = predict(clean)
    report: dict[str, Any] = {"describes": COUNTERFACTUAL_DESCRIBES}
    normal, pneumonia = labels == 0, labels == 1
    for severity in SEVERITIES:
        swapped = counterfactual_images(working, labels, severity, image_size)
        p_swapped = predict(swapped)
        if observe is not None:
            observe(f"cf_swap@{severity}", swapped, p_swapped)
        if collected is not None:
            collected[f"cf_swap@{severity}"] = p_swapped
        cases = {
            "normal_as_pneumonia": np.where(normal, p_swapped, p_clean),
            "pneumonia_as_normal": np.where(pneumonia, p_swapped, p_clean),
            "swap": p_swapped,
        }
        for name, probabilities in cases.items():
            values = binary_metrics(labels, probabilities, threshold)
            report.setdefault(name, {})[str(severity)] = {k: values[k] for k in REPORTED}
        report.setdefault("cue_effect", {})[str(severity)] = cue_effect(p_clean, p_swapped, labels)
    report["summary"] = {
        "abs_cue_effect": abs(report["cue_effect"]["2"]),
        "specificity": report["normal_as_pneumonia"]["2"]["specificity"],
        "sensitivity": report["pneumonia_as_normal"]["2"]["sensitivity"],
        "roc_auc": report["swap"]["2"]["roc_auc"],
        "balanced_accuracy": (report["normal_as_pneumonia"]["2"]["specificity"]
                              + report["pneumonia_as_normal"]["2"]["sensitivity"]) / 2,
        "cue_effect": report["cue_effect"]["2"],
    }  # fmt: skip
    s = report["summary"]
    log.info("counterfactual: specificity %.3f, sensitivity %.3f, swap ROC-AUC %.4f, cue effect "
             "%.2f logits", s["specificity"], s["sensitivity"], s["roc_auc"], s["cue_effect"])  # fmt: skip
    return report


def cue_effect(clean: np.ndarray, swapped: np.ndarray, labels: np.ndarray) -> float:
    """How far the network moves towards the class whose acquisition look an image was given
    (logits, both classes averaged): 0 for a network blind to the look."""
    moved = logit(swapped) - logit(clean)
    return float((moved[labels == 0].mean() - moved[labels == 1].mean()) / 2)


def shortcut_metrics(workspace: Any) -> dict[str, float]:
    """The data's shortcut meter (validate, reports/validation.json) for the run, beside the
    counterfactual figures that say whether this network took the shortcut."""
    if not workspace.validation.is_file():
        return {}
    meter = json.loads(workspace.validation.read_text()).get("shortcut") or {}
    values = {"data/shortcut_roc_auc": meter.get("roc_auc")}
    values |= {f"data/shortcut/{cue}": auc for cue, auc in (meter.get("per_cue") or {}).items()}
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float)}


def precision_probe(settings: Any, workspace: Any, predictor: Any) -> Any:
    """The reduced-precision candidates, int8 calibrated on a seeded draw of the train split."""
    from pneumo.data.preprocess import load_arrays
    from pneumo.evaluation.precision import PrecisionProbe

    train = load_arrays(workspace.arrays("train"))["images"]
    count = settings.stress.reduced_precision.calibration_images
    return PrecisionProbe(predictor, settings, calibration_draw(train, count, settings.stress.seed))


def calibration_draw(train: np.ndarray, count: int, seed: int) -> np.ndarray:
    """int8's calibration images: a seeded draw of ``count`` train images (all when fewer)."""
    rng = np.random.default_rng(seed)
    return train[np.sort(rng.choice(len(train), min(count, len(train)), replace=False))]


def precision_metrics(report: dict[str, Any]) -> dict[str, float]:
    """MLflow metrics of the precision evidence: each measured candidate's figures."""
    keys = ("max_probability_gap", "flip_rate", "worst_auc_drop", "cue_effect_change")
    return {f"precision/{name}/{key}": float(figures[key])
            for name, figures in report["candidates"].items()
            if figures.get("measured", True) for key in keys}  # fmt: skip


def stress(settings: Any, workspace: Any) -> dict[str, Any]:
    """The `stress` stage: this workspace's model on the shifted validation split."""
    from pneumo.accel import configure_threads
    from pneumo.data.preprocess import load_arrays
    from pneumo.inference.predictor import Predictor

    configure_threads(settings.model.threads)
    predictor = Predictor.from_workspace(
        workspace, settings.model.accelerator(), settings.model.runtime
    )
    val = load_arrays(workspace.arrays("val"))
    root = workspace.resolve(settings.data.root)
    working = working_copies([str(root / p) for p in val["paths"]], predictor.image_size,
                             settings.preprocess.workers)  # fmt: skip
    sets: dict[str, np.ndarray] = {}
    probe = precision_probe(settings, workspace, predictor)
    report = stress_report(
        lambda images: predictor.probabilities(images, settings.model.batch_size),
        working, val["labels"], predictor.threshold, predictor.image_size, settings.stress.seed,
        sets, probe,
    )  # fmt: skip
    from pneumo.evaluation.precision import evidence, write_evidence

    report["precision"] = evidence(probe, sets, val["labels"], predictor.threshold,
                                   settings.stress.reduced_precision)  # fmt: skip
    write_evidence(report["precision"], workspace.precision)
    from pneumo.decision.operating_point import referral_table, rule_table

    # Which threshold rule holds on simulated sites (this network's probabilities, validation),
    # and what each referral rule leaves unreferred there.
    report["operating_points"] = rule_table(val["labels"], sets, settings.evaluate,
                                            settings.stress.min_sensitivity)  # fmt: skip
    report["referral"] = referral_table(val["labels"], sets, predictor.threshold,
                                        settings.evaluate)  # fmt: skip
    from pneumo.decision.site_simulation import markdown, simulate

    # The shipped decision, `adapt` and `calibrate` on simulated sites: reports/adaptation.md.
    report["adaptation"] = simulate(val["labels"], val["patient_ids"], sets, predictor.decision,
                                    settings)  # fmt: skip
    with atomic_path(workspace.adaptation_report) as tmp:
        tmp.write_text(markdown(report, report["adaptation"]))
    files = write_outputs(report, workspace.stress_metrics, workspace.stress_plots)
    workspace.write_summary("stress", {
        "cf_cue_effect": report["counterfactual"]["summary"].get("cue_effect"),
        "stress_worst_auc": report["summary"].get("worst_roc_auc"),
    })  # fmt: skip
    if workspace.run_id.is_file():
        from pneumo import tracking

        flat = {f"stress/{k}": v for k, v in report["summary"].items() if isinstance(v, float)}
        flat |= {f"counterfactual/{k}": v for k, v in report["counterfactual"]["summary"].items()}
        flat |= shortcut_metrics(workspace)
        flat |= precision_metrics(report["precision"])
        tracking.log_to_run(settings, workspace, workspace.run_id.read_text().strip(), flat,
                            files, "stress")  # fmt: skip
    s = report["summary"]
    log.info("stress: mean ROC-AUC %.4f, worst %.4f (%s); worst specificity %.3f (%s)",
             s["mean_roc_auc"], s["worst_roc_auc"], s["worst_roc_auc_shift"],
             s["worst_specificity"], s["worst_specificity_shift"])  # fmt: skip
    return report
