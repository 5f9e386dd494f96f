"""params.yaml -> typed settings: the only place hyper-parameters and data locations are read.

Unknown keys and invalid values are rejected with a message that names the key, so a typo in
params.yaml fails before any work starts instead of silently falling back to a default.

One module per group of sections (data, model, evaluation, service); this one assembles them
into :class:`Settings` and reads the file.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pneumo.config.base import _Section
from pneumo.config.data import (
    DataSettings,
    IngestSettings,
    PreprocessSettings,
    SplitSettings,
    ValidateSettings,
)
from pneumo.config.evaluation import (
    AdaptSettings,
    CalibrateSettings,
    CompareSettings,
    EvaluateSettings,
    ExplainSettings,
    GuardSettings,
    StressSettings,
    TrackingSettings,
)
from pneumo.config.model import (
    AugmentSettings,
    ModelSettings,
    PaperCNNOptions,
    ResNetOptions,
    TrainSettings,
)
from pneumo.config.service import (
    DicomSettings,
    DriftMethod,
    GateMetric,
    MonitorSettings,
    RegistrySettings,
    ScoreSettings,
    ServeSettings,
)
from pneumo.errors import ConfigError

__all__ = [
    "AdaptSettings", "AugmentSettings", "CalibrateSettings", "CompareSettings", "ConfigError",
    "DataSettings", "DicomSettings", "DriftMethod", "EvaluateSettings", "ExplainSettings",
    "GateMetric", "GuardSettings", "IngestSettings", "ModelSettings", "MonitorSettings",
    "PaperCNNOptions", "PreprocessSettings", "RegistrySettings", "ResNetOptions", "ScoreSettings",
    "ServeSettings", "Settings", "SplitSettings", "StressSettings", "TrackingSettings",
    "TrainSettings", "ValidateSettings", "load_settings", "DEFAULT_PARAMS", "_Section",
]  # fmt: skip

DEFAULT_PARAMS = Path("params.yaml")


class Settings(_Section):
    data: DataSettings = DataSettings()
    ingest: IngestSettings = IngestSettings()
    validate_: ValidateSettings = Field(ValidateSettings(), alias="validate")
    split: SplitSettings = SplitSettings()
    preprocess: PreprocessSettings = PreprocessSettings()
    model: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings()
    tracking: TrackingSettings = TrackingSettings()
    evaluate: EvaluateSettings = EvaluateSettings()
    compare: CompareSettings = CompareSettings()
    explain: ExplainSettings = ExplainSettings()
    stress: StressSettings = StressSettings()
    adapt: AdaptSettings = AdaptSettings()
    guard: GuardSettings = GuardSettings()
    calibrate: CalibrateSettings = CalibrateSettings()
    registry: RegistrySettings = RegistrySettings()
    score: ScoreSettings = ScoreSettings()
    serve: ServeSettings = ServeSettings()
    monitor: MonitorSettings = MonitorSettings()
    dicom: DicomSettings = DicomSettings()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _image_fits_model(self) -> Settings:
        from pneumo.models import min_image_size  # torch-free: keeps config imports fast

        needed = min_image_size(self.model.arch, self.model.options())
        if self.preprocess.image_size < needed:
            # ConfigError, not ValueError: pydantic would report it under an empty key.
            raise ConfigError(
                f"preprocess.image_size {self.preprocess.image_size} is too small for model.arch "
                f"'{self.model.arch}' (needs >= {needed}): raise preprocess.image_size or choose "
                "a shallower model.arch"
            )
        return self


def _known_keys(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def _section_model(loc: tuple[Any, ...]) -> type[BaseModel]:
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        for name, field in model.model_fields.items():
            if part in (name, field.alias) and isinstance(field.annotation, type):
                if issubclass(field.annotation, BaseModel):
                    model = field.annotation
    return model


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    key = ".".join(str(p) for p in loc)
    if error["type"] == "extra_forbidden":
        known = _known_keys(_section_model(loc))
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else f" (known: {', '.join(known)})"
        return f"unknown key '{key}'{suggestion}"
    return f"invalid value for '{key}': {error['msg']}"


def load_settings(
    path: Path | str = DEFAULT_PARAMS, overrides: dict[str, Any] | None = None
) -> Settings:
    """Read and validate params.yaml; ``overrides`` maps dotted keys to values (e.g. the CLI's --data)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} not found: run from the project root or pass --params PATH")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}".replace("\n", " ")) from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping of sections (data:, ingest:, ...)")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from None
