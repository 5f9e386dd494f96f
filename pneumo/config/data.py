"""The data sections of params.yaml: data, ingest, validate, split, preprocess."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from pneumo.config.base import _Section


class DataSettings(_Section):
    root: Path = Field(
        Path("../shared/data/chest_xray"), description="Kermany-layout dataset folder"
    )
    scope_root: Path = Field(
        Path("data/scope"),
        description="real radiographs outside the model's scope (adults, laterals, other body "
        "parts): <kind>/<source>/<file> with a manifest.csv; the guard's scope check learns to "
        "name them when the folder holds any (pneumo/inference/scope.py)",
    )


class IngestSettings(_Section):
    max_quarantine_fraction: float = Field(0.01, ge=0.0, le=1.0)
    workers: int = Field(0, ge=0, description="0 = one per CPU core")


class ValidateSettings(_Section):
    min_rows: int = Field(100, ge=1)
    max_rows: int = Field(200_000, ge=1)
    min_side: int = Field(64, ge=1, description="smallest acceptable width/height in pixels")
    max_side: int = Field(8192, ge=1)
    min_pneumonia_fraction: float = Field(0.2, ge=0.0, le=1.0)
    max_pneumonia_fraction: float = Field(0.9, ge=0.0, le=1.0)
    shortcut_warn_auc: float = Field(
        0.75,
        gt=0.5,
        le=1.0,
        description="warn when acquisition cues alone (file size, sharpness, noise, resolution) "
        "separate the classes with at least this patient-grouped ROC-AUC",
    )
    shortcut_sample: int = Field(
        2000, ge=50, description="images per class the shortcut meter reads (a seeded sample)"
    )

    @model_validator(mode="after")
    def _bounds_ordered(self) -> ValidateSettings:
        for low, high in (
            ("min_rows", "max_rows"),
            ("min_side", "max_side"),
            ("min_pneumonia_fraction", "max_pneumonia_fraction"),
        ):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} must not exceed {high}")
        return self


class SplitSettings(_Section):
    seed: int = 42
    val_fraction: float = Field(0.15, gt=0.0, lt=0.5)
    test_fraction: float = Field(
        0.15, gt=0.0, lt=0.5, description="used only when the dataset has no test/ folder"
    )
    stratify_tolerance: float = Field(
        0.03, gt=0.0, le=0.2, description="max |pneumonia share of a split - share of its pool|"
    )


class PreprocessSettings(_Section):
    image_size: int = Field(128, ge=32, le=512)
    workers: int = Field(0, ge=0, description="0 = one per CPU core")
