"""What the scope check catches, measured: the synthetic probes and each real out-of-scope source.

A source is measured by a scope check whose kind classifier never saw it (refitted without it,
recalibrated on validation), so its rate says what happens with radiographs from a new place:
the figures in ``metrics/guard.json`` and ``reports/scope.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.workspace import atomic_path

Features = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def measure_probes(
    guard: Any, val_images: np.ndarray, size: int, settings: Any, features: Features
) -> dict[str, dict[str, float]]:
    """Photographs, documents, noise and unusable radiographs: the share flagged, and by the
    file screen alone."""
    from pneumo.data.preprocess import decode_radiograph
    from pneumo.evaluation.guard_probes import probe_kinds
    from pneumo.inference.guard import Screening, reasons

    out: dict[str, dict[str, float]] = {}
    for kind, probes in probe_kinds(val_images, settings.probes_per_kind, settings.seed).items():
        pixels = np.stack([decode_radiograph(img, size) for img in probes])
        screened = [Screening.of(img).reason(p) for img, p in zip(probes, pixels, strict=True)]
        found = reasons(guard, features(pixels)[1], screened)[1]
        out[kind] = {
            "n": len(found),
            "flagged": float(np.mean([r is not None for r in found])),
            "by_screen": float(np.mean([s is not None for s in screened])),
        }
    return out


def measure_sources(
    guard: Any,
    scope: Any,
    scope_features: np.ndarray | None,
    scope_probabilities: np.ndarray,
    train_features: np.ndarray,
    val_features: np.ndarray,
    decision: Any,
) -> dict[str, Any]:
    """Per source of the real set, with every classifier refitted without that source (leave
    one source out): flagged by the one-class detectors alone, by what a clone without the set
    ships (they and the pixel prior), by the whole check; and how many would be called pneumonia
    with no flag (the harm the check exists to prevent)."""
    from pneumo.inference.guard import fit_kinds
    from pneumo.inference.scope import KIND_C, KIND_SEGMENTS, PIXELS_SEGMENT, PRIOR_C, segment

    if scope_features is None or not len(scope):
        return {"n": 0, "note": "no out-of-scope set (data.scope_root): one-class detectors only"}

    def columns(names: tuple[str, ...], rest: np.ndarray, c: float) -> tuple[dict, list[str]]:
        return fit_kinds(segment(train_features, guard.segments, *names),
                         segment(scope_features[rest], guard.segments, *names),
                         scope.kinds[rest], c)  # fmt: skip

    one_class = replace(guard, kinds={}, kind_names=[], prior={}, prior_names=[])
    one_class = one_class.calibrate(val_features)
    sources: dict[str, Any] = {}
    for source in sorted(set(scope.sources.tolist())):
        held = scope.sources == source
        rest = ~held
        kinds, names, prior, prior_names = {}, [], {}, []
        if len(set(scope.kinds[rest].tolist())):
            kinds, names = columns(KIND_SEGMENTS, rest, KIND_C)
            if guard.prior:
                prior, prior_names = columns((PIXELS_SEGMENT,), rest, PRIOR_C)
        blind = replace(guard, kinds=kinds, kind_names=names, prior=prior,
                        prior_names=prior_names).calibrate(val_features)  # fmt: skip
        shipped = replace(guard, kinds={}, kind_names=[], prior=prior,
                          prior_names=prior_names).calibrate(val_features)  # fmt: skip
        if decision is not None:
            called = decision.positive(decision.adjust(scope_probabilities[held]))
        else:
            called = scope_probabilities[held] >= 0.5
        checks = {"one_class": one_class, "without_set": shipped if guard.prior else None,
                  "held_out": blind}  # fmt: skip
        row = {"kind": str(scope.kinds[held][0]),
               "licence": scope.licences.get(source, "not recorded"), "n": int(held.sum()),
               **_rates(checks, scope_features[held], called)}  # fmt: skip
        sources[source] = row
    worst = min(s["flagged_or_called_normal"] for s in sources.values())
    return {"n": len(scope), "skipped": scope.skipped, "sources": sources,
            "worst_held_out_source": worst}  # fmt: skip


def _rates(checks: dict[str, Any], features: np.ndarray, called: np.ndarray) -> dict[str, float]:
    """Per check: the share flagged and the share called pneumonia with no flag (the whole
    check's under the plain names, with the share flagged or called normal)."""
    rates: dict[str, float] = {}
    for name, check in checks.items():
        if check is None:  # no pixel prior: no "without the set" column
            continue
        flagged = check.flags(check.scores(features))
        suffix = "" if name == "held_out" else f"_{name}"
        rates[f"flagged_{name}"] = float(flagged.mean())
        if name == "held_out":
            rates["flagged_or_called_normal"] = float((flagged | ~called).mean())
        rates[f"called_pneumonia_unflagged{suffix}"] = float((called & ~flagged).mean())
    return rates


def write_scope_report(path: Path, report: dict[str, Any], scope: Any) -> None:
    """reports/scope.md: the set, its licences and what the check did with each source."""
    scope_report = report["scope"]
    lines = [
        "# The scope check, measured on real out-of-scope radiographs",
        "",
        "Written by `pneumo guard` (`dvc repro guard`) when `data.scope_root` holds a set; the "
        "images stay outside git. Each source is judged by a scope check whose kind classifier "
        "was fitted without it (leave one source out), cut-off on the validation split. A "
        "clone without the images ships the one-class detectors and the pixel prior fitted here "
        "(`prior.json`, committed): its columns say what that catches.",
        "",
        f"- Detectors: {', '.join(report['detectors'])}; validation flagged "
        f"{report['val']['flagged']:.1%} (at most {report['max_val_flag_rate']:.0%}).",
        f"- Synthetic probes (photographs, documents, noise): "
        f"{report['non_radiographs_flagged']:.1%} flagged.",
        f"- Real set: {scope_report['n']} images ({scope_report['skipped']} unreadable, skipped).",
        "",
        "| kind | source | n | one-class only: flagged | ...called pneumonia, no flag | without "
        "the images (pixel prior): flagged | ...called pneumonia, no flag | whole check: flagged "
        "| ...flagged or called normal | ...called pneumonia, no flag | licence |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for source, row in scope_report["sources"].items():
        cells = [row["kind"], source, str(row["n"])]
        for key in (
            "flagged_one_class",
            "called_pneumonia_unflagged_one_class",
            "flagged_without_set",
            "called_pneumonia_unflagged_without_set",
            "flagged_held_out",
            "flagged_or_called_normal",
            "called_pneumonia_unflagged",
        ):
            cells.append(f"{row[key]:.1%}" if key in row else "n/a")
        lines.append("| " + " | ".join([*cells, row["licence"]]) + " |")
    lines += ["", "Probe kinds (synthetic, from the validation split and bundled images):", "",
              "| probe | n | flagged | by the file screen |", "|---|---:|---:|---:|"]  # fmt: skip
    for kind, row in report["kinds"].items():
        lines.append(f"| {kind} | {row['n']} | {row['flagged']:.1%} | {row['by_screen']:.1%} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
