"""The gate's verdict for one version, and how it reads: a terminal table, markdown descriptions.

"Decision" is reserved for the threshold (``decision.json``, :mod:`pneumo.decision`); what the
promotion gate concludes is a *verdict*. It is written to ``reports/gate_verdict.json``, into the
version's tags (the registry's audit log) and into the version's description.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from pneumo.config import RegistrySettings
from pneumo.registry.gate import FLOOR_KEYS, REPORTED_METRICS

MAX_DESCRIPTION = 5000  # characters MLflow's SQL stores keep of a description


@dataclass(frozen=True)
class GateVerdict:
    """What the promotion gate concluded for one registered version, and why."""

    model_name: str
    version: int
    run_id: str
    passed: bool
    reasons: list[str]
    challenger_metrics: dict[str, float]
    champion_version: int | None  # the champion it was compared with
    champion_metrics: dict[str, float] | None  # re-scored on this workspace's test split
    floors: dict[str, float]
    margin: float
    primary_metrics: list[str]
    data_sha256: str
    decided_at: str
    newly_registered: bool = True
    champion_after: int | None = field(default=None)

    @property
    def status(self) -> str:
        return "passed" if self.passed else "failed"

    @property
    def outcome(self) -> str:
        """One line: who is the champion now."""
        if self.passed:
            replaced = f" (v{self.champion_version} -> previous)" if self.champion_version else ""
            return f"promoted: v{self.version} is the champion{replaced}"
        kept = f"v{self.champion_version}" if self.champion_version else "none"
        return f"not promoted: champion kept ({kept})"

    def comparison(self) -> dict[str, dict[str, float | None]]:
        """metric -> {champion, challenger, floor}: the rows of the verdict table."""
        return {
            metric: {
                "champion": (self.champion_metrics or {}).get(metric),
                "challenger": self.challenger_metrics.get(metric),
                "floor": self.floors.get(metric),
            }
            for metric in REPORTED_METRICS
        }

    def to_json(self) -> dict[str, Any]:
        """Strict JSON: NaN metrics (a class absent from the test split) become null."""
        extra = {"status": self.status, "verdict": self.outcome, "comparison": self.comparison()}
        return _nan_to_none({**asdict(self), **extra})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GateVerdict:
        names = cls.__dataclass_fields__.keys()
        return cls(**{key: value for key, value in data.items() if key in names})


def verdict_table(verdict: GateVerdict) -> str:
    """The verdict as a terminal table: metrics, floors, outcome and reasons."""
    champion = f"champion v{verdict.champion_version}" if verdict.champion_version else "champion"
    header = f"{'metric':<13}{'floor':>8}{champion:>16}{'challenger v' + str(verdict.version):>16}"
    lines = [header, "-" * len(header)]
    for metric, row in verdict.comparison().items():
        lines.append(
            f"{metric:<13}{_cell(row['floor']):>8}{_cell(row['champion']):>16}"
            f"{_cell(row['challenger']):>16}"
        )
    lines.append(_margin_line(verdict))
    recorded = "" if verdict.newly_registered else " [already registered: recorded verdict]"
    lines.append(f"verdict: {verdict.outcome}{recorded}")
    lines.extend(f"  - {reason}" for reason in verdict.reasons)
    return "\n".join(lines)


def model_description(settings: RegistrySettings) -> str:
    """The registered model's description: what it is, its aliases and the gate's rule."""
    floor_text = ", ".join(f"{m} >= {getattr(settings, k):g}" for m, k in FLOOR_KEYS.items())
    return (
        "Pneumonia classifier for paediatric chest X-rays, trained and registered by pneumo.\n\n"
        "- Input: uint8 grayscale radiographs (N, S, S) decoded by "
        "`pneumo.data.preprocess.decode_radiograph`; S is the version's `image_size` tag.\n"
        "- Output: the probability of pneumonia. The version's `decision.json` holds the "
        "threshold chosen on the validation split (a probability >= it means pneumonia).\n"
        "- Aliases: `champion` (served), `challenger` (registered, not promoted), `previous` "
        "(what `pneumo registry rollback` restores).\n\n"
        f"Promotion gate (`pneumo/registry/gate.py`): a new version becomes the champion when, on "
        f"the test split, {floor_text}, and it trails the champion, re-scored with its own "
        f"weights and threshold on the same split, by at most {settings.margin:g} on "
        f"{', '.join(settings.primary_metrics)}. Each version's description holds its verdict.\n"
    )


def version_description(verdict: GateVerdict, intervals: pd.DataFrame, ci_level: float) -> str:
    """A version's description: the gate's table and verdict, then its test metrics with intervals.

    ``intervals``: rows of :func:`pneumo.evaluation.evaluate.metrics_table` for the test split.
    """
    champion = f"champion v{verdict.champion_version}" if verdict.champion_version else "champion"
    rows = [
        [metric, _cell(row["floor"]), _cell(row["champion"]), _cell(row["challenger"])]
        for metric, row in verdict.comparison().items()
    ]
    level = f"{100 * ci_level:g} %"
    metrics = [
        [r.metric, _cell(r.value), f"{_cell(r.ci_low)} - {_cell(r.ci_high)}"]
        for r in intervals.itertuples(index=False)
    ]
    text = "\n".join(
        [
            f"**Gate verdict: {verdict.outcome}** ({verdict.decided_at})",
            "",
            _markdown(["metric", "floor", champion, f"challenger v{verdict.version}"], rows),
            "",
            _margin_line(verdict) + f"; test split sha256 `{verdict.data_sha256[:16]}`.",
            "",
            *[f"- {reason}" for reason in verdict.reasons],
            "",
            f"**Test metrics** ({level} patient-bootstrap intervals)",
            "",
            _markdown(["metric", "value", f"{level} interval"], metrics),
        ]
    )
    return text[:MAX_DESCRIPTION]


def _margin_line(verdict: GateVerdict) -> str:
    return (
        f"non-inferiority margin {verdict.margin:g} on {', '.join(verdict.primary_metrics)}"
        " (champion re-scored on this test split)"
    )


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _cell(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value
