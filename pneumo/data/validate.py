"""The manifest's data contract, as a Great Expectations 1.x suite written in code.

A checkpoint runs the suite, builds Data Docs into the workspace and yields a JSON result; the
step fails with a short summary of every broken expectation, so a bad dataset never reaches training.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pneumo.config import ValidateSettings
from pneumo.data.ingest import MANIFEST_COLUMNS
from pneumo.data.kermany import CLASSES, PNEUMONIA, SOURCES, SPLITS, SUBTYPES
from pneumo.errors import ContractError, PipelineOrderError
from pneumo.workspace import Workspace, atomic_path

log = logging.getLogger(__name__)

SUITE_NAME = "manifest_contract"
SHORTCUT_SUITE = "acquisition_shortcut"
DOCS_SITE = "pneumo_data_docs"


@dataclass(frozen=True)
class ValidationOutcome:
    success: bool
    failures: list[str]
    result: dict[str, Any]


def build_suite(settings: ValidateSettings) -> Any:
    """The contract every manifest must honour; bounds come from params.yaml's ``validate`` section."""
    import great_expectations as gx

    E = gx.expectations
    suite = gx.ExpectationSuite(name=SUITE_NAME)
    suite.add_expectation(
        E.ExpectTableColumnsToMatchSet(
            column_set=[*MANIFEST_COLUMNS, "is_pneumonia"], exact_match=True
        )
    )
    suite.add_expectation(
        E.ExpectTableRowCountToBeBetween(min_value=settings.min_rows, max_value=settings.max_rows)
    )
    for column in ("path", "patient_id", "sha256", "label", "source_split", "source"):
        suite.add_expectation(E.ExpectColumnValuesToNotBeNull(column=column))
    suite.add_expectation(E.ExpectColumnValuesToBeUnique(column="path"))
    suite.add_expectation(E.ExpectColumnValuesToBeUnique(column="sha256"))
    suite.add_expectation(E.ExpectColumnValueLengthsToEqual(column="sha256", value=64))
    suite.add_expectation(E.ExpectColumnValuesToBeInSet(column="label", value_set=list(CLASSES)))
    suite.add_expectation(
        E.ExpectColumnValuesToBeInSet(column="source_split", value_set=list(SPLITS))
    )
    suite.add_expectation(E.ExpectColumnValuesToBeInSet(column="subtype", value_set=list(SUBTYPES)))
    suite.add_expectation(E.ExpectColumnValuesToBeInSet(column="source", value_set=list(SOURCES)))
    suite.add_expectation(E.ExpectColumnValueLengthsToBeBetween(column="patient_id", min_value=1))
    for column in ("width", "height"):
        suite.add_expectation(
            E.ExpectColumnValuesToBeBetween(
                column=column, min_value=settings.min_side, max_value=settings.max_side
            )
        )
    suite.add_expectation(E.ExpectColumnValuesToBeBetween(column="bytes", min_value=1))
    suite.add_expectation(
        E.ExpectColumnMeanToBeBetween(
            column="is_pneumonia",
            min_value=settings.min_pneumonia_fraction,
            max_value=settings.max_pneumonia_fraction,
        )
    )
    return suite


def build_shortcut_suite(warn_auc: float) -> Any:
    """The shortcut meter as a *warning*: one row per acquisition cue (and one for all of them)
    whose ROC-AUC should stay below ``warn_auc`` (pneumo/data/shortcut.py)."""
    import great_expectations as gx

    suite = gx.ExpectationSuite(name=SHORTCUT_SUITE)
    suite.add_expectation(
        gx.expectations.ExpectColumnValuesToBeBetween(
            column="roc_auc", min_value=0.0, max_value=warn_auc, severity="warning",
            description="acquisition cues alone should not separate NORMAL from PNEUMONIA "
            "(patient-grouped ROC-AUC); above this a network can learn the scanner",
        )
    )  # fmt: skip
    return suite


def shortcut_frame(meter: dict[str, Any]) -> pd.DataFrame:
    """The meter as rows GX can check and Data Docs can show: each cue, then all together."""
    rows = [{"cue": name, "roc_auc": auc} for name, auc in meter.get("per_cue", {}).items()]
    rows.append({"cue": "all cues (cross-validated)", "roc_auc": meter.get("roc_auc")})
    return pd.DataFrame(rows).dropna()


def _context(docs_dir: Path) -> Any:
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    context.add_data_docs_site(
        site_name=DOCS_SITE,
        site_config={
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir.resolve()),
            },
        },
    )
    return context


def _summarize(expectation: dict[str, Any], manifest: pd.DataFrame) -> str:
    """One readable line for a failed expectation, naming it and showing offending rows."""
    kwargs = {k: v for k, v in expectation["kwargs"].items() if k != "batch_id"}
    column = kwargs.pop("column", None)
    name = (
        f"{expectation['expectation_type']}({column})"
        if column
        else expectation["expectation_type"]
    )
    result = expectation.get("result", {})
    if "observed_value" in result:
        return f"{name}: observed {result['observed_value']!r}, expected {kwargs}"
    rows = result.get("unexpected_index_list") or []
    count = result.get("unexpected_count", len(rows))
    if expectation["expectation_type"] == "expect_column_values_to_be_unique" and column and rows:
        groups = manifest.loc[rows].groupby(column)["path"].apply(lambda p: " == ".join(sorted(p)))
        return f"{name}: {count} rows share a value: " + "; ".join(groups.head(5))
    examples = (
        ", ".join(f"{manifest.at[i, 'path']}={manifest.at[i, column]!r}" for i in rows[:3])
        if column
        else ""
    )
    return f"{name}: {count} unexpected rows" + (f", e.g. {examples}" if examples else "")


def _localize_docs(docs_dir: Path) -> None:
    """Data Docs load Bootstrap, jQuery and Vega from CDNs (blank offline): point them at local
    copies (pneumo/web_assets.py); without `make vendor` they keep the CDN addresses."""
    from pneumo.web_assets import WebAssetsError, localize_html

    try:
        localize_html(docs_dir)
    except WebAssetsError as exc:
        log.warning("Data Docs will need the internet to render: %s", exc)


def validate_manifest(
    manifest: pd.DataFrame,
    settings: ValidateSettings,
    docs_dir: Path,
    shortcut: dict[str, Any] | None = None,
) -> ValidationOutcome:
    """Run the contract's checkpoint on a manifest and build Data Docs in ``docs_dir``; with a
    ``shortcut`` meter (pneumo/data/shortcut.py), its warning suite runs in the same checkpoint."""
    import great_expectations as gx

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    frame = manifest.reset_index(drop=True).copy()
    frame["is_pneumonia"] = (frame["label"] == PNEUMONIA).astype("int64")
    context = _context(docs_dir)
    asset = context.data_sources.add_pandas("manifest").add_dataframe_asset("manifest")
    batch = asset.add_batch_definition_whole_dataframe("whole_manifest")
    suite = context.suites.add(build_suite(settings))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="manifest_validation", data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="manifest_checkpoint",
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])],
            result_format={"result_format": "COMPLETE", "partial_unexpected_count": 20},
        )
    )
    run = checkpoint.run(batch_parameters={"dataframe": frame})
    if shortcut is not None:  # its own checkpoint: another table, and only a warning
        _check_shortcut(context, shortcut, settings.shortcut_warn_auc)
    _localize_docs(docs_dir)
    described = run.describe_dict()
    expectations = described["validation_results"][0]["expectations"]
    failures = [_summarize(e, frame) for e in expectations if not e["success"]]
    for expectation in expectations:  # keep the JSON small: drop full row lists
        for key in ("unexpected_list", "unexpected_index_list", "partial_unexpected_index_list"):
            expectation.get("result", {}).pop(key, None)
    return ValidationOutcome(success=bool(run.success), failures=failures, result=described)


def _check_shortcut(context: Any, shortcut: dict[str, Any], warn_auc: float) -> bool:
    """The shortcut meter's warning suite, in Data Docs beside the contract; never fails."""
    import great_expectations as gx

    asset = context.data_sources.add_pandas("shortcut").add_dataframe_asset("acquisition_cues")
    definition = context.validation_definitions.add(gx.ValidationDefinition(
        name="shortcut_meter", data=asset.add_batch_definition_whole_dataframe("cue_separability"),
        suite=context.suites.add(build_shortcut_suite(warn_auc)),
    ))  # fmt: skip
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name="shortcut_checkpoint", validation_definitions=[definition],
        actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])],
        result_format={"result_format": "SUMMARY"},
    ))  # fmt: skip
    return bool(checkpoint.run(batch_parameters={"dataframe": shortcut_frame(shortcut)}).success)


def validate(
    manifest_path: Path,
    settings: ValidateSettings,
    workspace: Workspace = Workspace(),
    data_root: Path | None = None,
) -> ValidationOutcome:
    """Validate the manifest on disk, write the JSON result and Data Docs; raise on any failure.
    With ``data_root`` (where the manifest's paths live) the shortcut meter runs too."""
    if not Path(manifest_path).is_file():
        raise PipelineOrderError(f"{manifest_path} not found: run `pneumo ingest` first")
    manifest = pd.read_parquet(manifest_path)
    workspace.data_docs.mkdir(parents=True, exist_ok=True)
    meter = None
    if data_root is not None:
        from pneumo.data.shortcut import measure

        meter = measure(manifest, data_root, settings.shortcut_warn_auc, settings.shortcut_sample)
    outcome = validate_manifest(manifest, settings, workspace.data_docs, meter)
    report = {"success": outcome.success, "failures": outcome.failures,
              **({"shortcut": meter} if meter is not None else {}), **outcome.result}  # fmt: skip
    with atomic_path(workspace.validation) as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if meter is not None:  # the meter's own file, for the model card
        workspace.shortcut_metrics.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(workspace.shortcut_metrics) as tmp:
            tmp.write_text(json.dumps(meter, indent=2) + "\n")
    workspace.write_summary("validate", {"shortcut_auc": (meter or {}).get("roc_auc")})
    index = workspace.data_docs / "index.html"
    if not outcome.success:
        raise ContractError(
            f"{len(outcome.failures)} expectation(s) failed (details: {workspace.validation}, "
            f"{index}):\n  - " + "\n  - ".join(outcome.failures)
        )
    log.info("data contract passed: %d rows; Data Docs at %s", len(manifest), index)
    return outcome


def build_docs(
    manifest_path: Path, settings: ValidateSettings, workspace: Workspace = Workspace()
) -> Path:
    """Data Docs alone, when they are missing (a fresh clone whose validate stage DVC skipped:
    they are git-ignored and no DVC output, since GX stamps each build with its time). Runs the
    same checkpoints; writes no result file, so the committed ones stay as they are."""
    import json as json_

    if not Path(manifest_path).is_file():
        raise PipelineOrderError(f"{manifest_path} not found: run `pneumo ingest` first")
    manifest = pd.read_parquet(manifest_path)
    meter = None
    if workspace.shortcut_metrics.is_file():
        meter = json_.loads(workspace.shortcut_metrics.read_text())
    workspace.data_docs.mkdir(parents=True, exist_ok=True)
    validate_manifest(manifest, settings, workspace.data_docs, meter)
    return workspace.data_docs / "index.html"
