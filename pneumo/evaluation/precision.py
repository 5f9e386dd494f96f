"""Reduced precision by evidence: the network at bf16 and int8 against fp32, set by set.

A faster network is only the same model if it makes the same calls. The stress stage scores the
validation split, every acquisition shift and the counterfactual swaps with the fp32 network;
:class:`PrecisionProbe` scores the very same images with each candidate (OpenVINO bf16, where
the CPU computes bf16 natively, and int8 from NNCF post-training quantisation calibrated on
the train split) and :func:`evidence` compares them: the largest probability gap on any image,
the share of calls that change at the shipped threshold, the ROC-AUC drop on the clean set and
on each shift, and how far the counterfactual cue effect (the shortcut meter) moves. Within
``stress.reduced_precision``'s bounds a candidate is allowed; ``serve`` names the one the
service may run (models/precision.json, carried with the model; pneumo.inference.runtime reads
it). The carved test split is never read here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.accel import cpu_flags, native_bf16
from pneumo.decision.metrics import binary_metrics
from pneumo.evaluation.stress import cue_effect
from pneumo.workspace import atomic_path

log = logging.getLogger(__name__)

# Candidates the service can build from the model file alone (int8 needs its calibrated network
# shipped with the model: measured, not yet served).
SERVABLE = ("bf16",)
# Fastest first: the one the service runs is the first allowed and servable.
SPEED_ORDER = ("int8", "bf16")


class PrecisionProbe:
    """Scores every set the stress stage scores with each reduced-precision candidate."""

    def __init__(self, predictor: Any, settings: Any, calibration: np.ndarray) -> None:
        from pneumo.inference.runtime import export_network

        self.batch_size = settings.model.batch_size
        self.candidates: dict[str, Any] = {}
        self.skipped: dict[str, str] = {}
        for precision in settings.stress.reduced_precision.candidates:
            if precision == "bf16" and not native_bf16("cpu"):
                self.skipped[precision] = "this CPU has no native bf16 (OpenVINO would run fp32)"
                continue
            network = export_network(predictor.model, "openvino", precision,
                                     calibration=calibration)  # fmt: skip
            self.candidates[precision] = dataclasses.replace(predictor, network=network)
        self.sets: dict[str, dict[str, np.ndarray]] = {name: {} for name in self.candidates}

    def __call__(self, name: str, images: np.ndarray, reference: np.ndarray) -> None:
        """Score ``images`` (the set ``name``) with every candidate."""
        for precision, predictor in self.candidates.items():
            self.sets[precision][name] = predictor.probabilities(images, self.batch_size)


def compare(
    reference: dict[str, np.ndarray],
    candidate: dict[str, np.ndarray],
    labels: np.ndarray,
    threshold: float,
) -> dict[str, Any]:
    """One candidate against fp32 on the same sets (clean, NAME@SEVERITY, cf_swap@S)."""
    gaps, flips, total, drops = [], 0, 0, {}
    for name, expected in reference.items():
        got = candidate[name]
        gaps.append(float(np.max(np.abs(got - expected))))
        flips += int(np.sum((got >= threshold) != (expected >= threshold)))
        total += len(got)
        if not name.startswith("cf_"):
            drops[name] = (binary_metrics(labels, expected, threshold)["roc_auc"]
                           - binary_metrics(labels, got, threshold)["roc_auc"])  # fmt: skip
    worst = max(drops, key=lambda name: drops[name])
    cue = {which: cue_effect(sets["clean"], sets["cf_swap@2"], labels)
           for which, sets in (("fp32", reference), ("candidate", candidate))}  # fmt: skip
    return {
        "sets": len(reference),
        "images": total,
        "max_probability_gap": max(gaps),
        "flips": flips,
        "flip_rate": flips / total,
        "clean_auc_drop": drops["clean"],
        "worst_auc_drop": drops[worst],
        "worst_auc_drop_set": worst,
        "cue_effect_fp32": cue["fp32"],
        "cue_effect": cue["candidate"],
        "cue_effect_change": abs(cue["candidate"] - cue["fp32"]),
    }


def verdict(figures: dict[str, Any], bounds: Any) -> dict[str, bool]:
    """Each bound of ``stress.reduced_precision`` held or not."""
    return {
        "max_probability_gap": figures["max_probability_gap"] <= bounds.max_probability_gap,
        "max_flip_rate": figures["flip_rate"] <= bounds.max_flip_rate,
        "max_auc_drop": figures["worst_auc_drop"] <= bounds.max_auc_drop,
        "max_cue_effect_change": figures["cue_effect_change"] <= bounds.max_cue_effect_change,
    }


def evidence(
    probe: PrecisionProbe,
    reference: dict[str, np.ndarray],
    labels: np.ndarray,
    threshold: float,
    bounds: Any,
) -> dict[str, Any]:
    """Every candidate's figures and verdict, and the precision the service may run."""
    candidates: dict[str, Any] = {}
    for precision, sets in probe.sets.items():
        figures = compare({k: reference[k] for k in sets}, sets, labels, threshold)
        held = verdict(figures, bounds)
        candidates[precision] = {**figures, "within": held, "allowed": all(held.values()),
                                 "servable": precision in SERVABLE}  # fmt: skip
    for precision, why in probe.skipped.items():
        candidates[precision] = {"measured": False, "why": why, "allowed": False,
                                 "servable": precision in SERVABLE}  # fmt: skip
    serve = next((p for p in SPEED_ORDER
                  if candidates.get(p, {}).get("allowed") and p in SERVABLE), "fp32")  # fmt: skip
    return {
        "reference": "fp32",
        "threshold": threshold,
        "bounds": bounds.model_dump(mode="json"),
        "cpu_native_bf16": native_bf16("cpu"),
        "cpu_flags": sorted(f for f in cpu_flags() if "bf16" in f or f.startswith("avx512")),
        "candidates": candidates,
        "serve": serve,
    }


def write_evidence(report: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    for precision, figures in report["candidates"].items():
        if figures.get("measured", True):
            log.info("%s vs fp32: max gap %.4f, %d calls changed (%.4f), worst ROC-AUC drop %.4f "
                     "(%s), cue effect moved %.3f logits: %s", precision,
                     figures["max_probability_gap"], figures["flips"], figures["flip_rate"],
                     figures["worst_auc_drop"], figures["worst_auc_drop_set"],
                     figures["cue_effect_change"],
                     "allowed" if figures["allowed"] else "refused")  # fmt: skip
        else:
            log.info("%s not measured: %s", precision, figures["why"])
    log.info("the service may run the network in %s (%s)", report["serve"], path)
