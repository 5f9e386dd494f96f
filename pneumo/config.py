"""params.yaml -> typed settings: the only place hyper-parameters and data locations are read.

Unknown keys and invalid values are rejected with a message that names the key, so a typo in
params.yaml fails before any work starts instead of silently falling back to a default.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pneumo.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSettings(_Section):
    root: Path = Field(
        Path("../shared/data/chest_xray"), description="Kermany-layout dataset folder"
    )
    scope_root: Path = Field(
        Path("data/scope"),
        description="real radiographs outside the model's scope (adults, laterals, other body "
        "parts): <kind>/<source>/<file> with a manifest.csv; the guard's scope check learns to "
        "name them when the folder holds any (pneumo/scope.py)",
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
        0.75, gt=0.5, le=1.0,
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


class ResNetOptions(_Section):
    widths: tuple[int, ...] = Field((32, 64, 128, 256), min_length=1, max_length=6)
    blocks_per_stage: int = Field(1, ge=1, le=4)
    stem_width: int = Field(24, ge=4, le=256)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)


class PaperCNNOptions(_Section):
    hidden_units: int = Field(128, ge=1, le=4096)
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="used by 2+ blocks, as in the paper")


class ModelSettings(_Section):
    arch: Literal["paper_cnn1", "paper_cnn2", "paper_cnn3", "paper_cnn4", "resnet"] = "resnet"
    resnet: ResNetOptions = ResNetOptions()
    paper_cnn: PaperCNNOptions = PaperCNNOptions()
    members: int = Field(1, ge=1, le=8, description="networks trained side by side, averaged")
    # How the model runs at inference (evaluation, prediction, serving); training has its own.
    tta: bool = Field(True, description="average predictions over small shifts at inference")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="for inference")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="for inference")
    runtime: Literal["auto", "torch", "openvino", "onnxruntime"] = Field(
        "auto",
        description="engine of serving and batch scoring (pneumo/runtime.py); auto: "
        "openvino on a CPU, torch on a GPU",
    )
    threads: int = Field(0, ge=0, description="torch threads for inference; 0 = one per core")
    batch_size: int = Field(128, ge=1, le=4096, description="images per inference call")

    def accelerator(self) -> Any:
        """The resolved inference device and precision (:mod:`pneumo.accel`)."""
        from pneumo.accel import resolve

        return resolve(self.device, self.precision)

    def options(self) -> dict[str, Any]:
        """The keyword options of the chosen architecture's family (its sub-section)."""
        family = self.paper_cnn if self.arch.startswith("paper_cnn") else self.resnet
        return family.model_dump(mode="json")


class AugmentSettings(_Section):
    enabled: bool = True
    engine: Literal["batched", "per_image"] = Field(
        "batched", description="batched tensor ops (fast); per_image: torchvision v2, the reference"
    )
    rotation_degrees: float = Field(10.0, ge=0.0, le=45.0)
    translate: float = Field(0.08, ge=0.0, le=0.3, description="max shift, fraction of the side")
    scale_min: float = Field(0.9, gt=0.0, le=1.0)
    scale_max: float = Field(1.15, ge=1.0, le=2.0)
    hflip_p: float = Field(0.0, ge=0.0, le=1.0)
    gamma_min: float = Field(0.6, gt=0.0, le=1.0)
    gamma_max: float = Field(1.6, ge=1.0, le=5.0)
    brightness: float = Field(0.3, ge=0.0, lt=1.0)
    contrast: float = Field(0.3, ge=0.0, lt=1.0)
    equalize_p: float = Field(0.1, ge=0.0, le=1.0)
    blur_p: float = Field(0.2, ge=0.0, le=1.0)
    blur_sigma_max: float = Field(1.0, ge=0.1, le=5.0)
    sharpen_p: float = Field(0.0, ge=0.0, le=1.0, description="unsharp-masked (batched only)")
    sharpen_max: float = Field(1.5, ge=0.0, le=5.0, description="largest unsharp-mask amount")
    noise_p: float = Field(0.2, ge=0.0, le=1.0)
    noise_sigma: float = Field(0.03, ge=0.0, le=0.5, description="fraction of the 0..255 range")
    erase_p: float = Field(0.0, ge=0.0, le=1.0)
    aspect_max: float = Field(
        1.0, ge=1.0, le=2.0, description="width/height stretched by up to this factor either way"
    )
    resample_p: float = Field(0.0, ge=0.0, le=1.0, description="made at a lower resolution")
    resample_scale_min: float = Field(0.5, gt=0.05, le=1.0, description="smallest side factor")
    jpeg_p: float = Field(0.0, ge=0.0, le=1.0, description="re-compressed as JPEG")
    jpeg_quality_min: int = Field(30, ge=1, le=100)
    jpeg_quality_max: int = Field(90, ge=1, le=100)
    border_p: float = Field(0.0, ge=0.0, le=1.0, description="black bars on the image's sides")
    border_max: float = Field(0.1, gt=0.0, le=0.3, description="widest bar, fraction of the side")

    @model_validator(mode="after")
    def _engine_supports(self) -> AugmentSettings:
        if self.jpeg_quality_min > self.jpeg_quality_max:
            raise ValueError("jpeg_quality_min must not exceed jpeg_quality_max")
        batched_only = {"aspect_max": 1.0, "resample_p": 0.0, "jpeg_p": 0.0, "border_p": 0.0,
                        "sharpen_p": 0.0}
        used = [k for k, off in batched_only.items() if getattr(self, k) != off]
        if self.engine == "per_image" and used:
            raise ValueError(f"{', '.join(used)} need engine: batched")
        return self


class TrainSettings(_Section):
    seed: int = 42
    epochs: int = Field(30, ge=1, le=1000, description="maximum; early stopping may end sooner")
    batch_size: int = Field(64, ge=2, le=4096)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(2e-3, gt=0.0, le=10.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd only")
    weight_decay: float = Field(0.05, ge=0.0, le=1.0)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0.0)
    class_balance: Literal["sampler", "weights", "none"] = "sampler"
    label_smoothing: float = Field(0.05, ge=0.0, lt=0.5)
    ema_decay: float = Field(0.998, ge=0.0, lt=1.0, description="0 = no weight averaging")
    monitor: Literal["val_roc_auc", "val_log_loss"] = "val_roc_auc"
    early_stopping_patience: int = Field(10, ge=0, description="epochs; 0 = never stop early")
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = one per available core")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field(
        "auto", description="auto: CUDA if present"
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast where the hardware has native bf16, else fp32"
    )
    augment: AugmentSettings = AugmentSettings()

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainSettings:
        if self.warmup_epochs >= self.epochs:
            raise ValueError("warmup_epochs must be smaller than epochs")
        return self


class TrackingSettings(_Section):
    uri: str = Field("sqlite:///mlruns.db", description="MLflow tracking URI; relative to the root")
    experiment: str = Field("pneumo", min_length=1)
    monitor_experiment: str = Field(
        "pneumo-monitor", min_length=1, description="the monitor flow's runs, apart from training"
    )
    log_model: bool = True


class EvaluateSettings(_Section):
    threshold_rule: Literal["youden", "target_sensitivity", "fixed"] = Field(
        "youden", description="how the decision threshold is chosen on the validation split"
    )
    youden_tolerance: float = Field(
        0.01, ge=0.0, lt=0.2, description="thresholds within this of the best J count as ties"
    )
    youden_tiebreak: Literal["most_specific", "centre"] = "most_specific"
    target_sensitivity: float = Field(0.95, gt=0.0, lt=1.0, description="target_sensitivity rule")
    fixed_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="fixed rule")
    referral_margin: float = Field(
        0.1, ge=0.0, lt=0.5, description="refer when |probability - threshold| < margin"
    )
    referral: Literal["margin", "conformal"] = Field(
        "margin",
        description="margin: the fixed band; conformal: the band where class-conditional split "
        "conformal prediction on validation is unsure (both classes plausible, or neither)",
    )
    referral_alpha: float = Field(
        0.05, gt=0.0, lt=0.5, description="conformal: miscoverage allowed per class"
    )
    bootstrap_samples: int = Field(1000, ge=0, le=100_000, description="0 = no intervals")
    ci_level: float = Field(0.95, gt=0.5, lt=1.0)
    calibration_bins: int = Field(10, ge=2, le=100)
    seed: int = 0


class CompareSettings(_Section):
    paper_archs: list[Literal["paper_cnn1", "paper_cnn2", "paper_cnn3", "paper_cnn4"]] = Field(
        default_factory=lambda: ["paper_cnn1", "paper_cnn2", "paper_cnn3", "paper_cnn4"]
    )
    epochs: int = Field(8, ge=1, le=1000, description="training epochs of each paper CNN")
    logistic_image_size: int = Field(
        32, ge=8, le=128, description="downsampled side for the pixels"
    )
    logistic_c: float = Field(
        0.1, gt=0.0, description="inverse L2 strength of the logistic regression"
    )


class StressSettings(_Section):
    """`pneumo stress`: the validation split under a fixed battery of acquisition shifts."""

    seed: int = Field(0, description="draws of the random shifts (noise, marker placement)")
    min_sensitivity: float = Field(
        0.95, gt=0.0, lt=1.0,
        description="the threshold-rule table (plots/stress/detail.json operating_points) recommends "
        "the rule that keeps this sensitivity on every simulated site",
    )


class CalibrateSettings(_Section):
    """`pneumo calibrate FOLDER --site NAME`: a registry version adapted to a new site's sample."""

    min_per_class: int = Field(30, ge=10, description="refuse samples with fewer images per class")
    folds: int = Field(5, ge=2, le=20, description="patient-grouped cross-fitting folds")
    min_sensitivity: float = Field(
        0.95, gt=0.0, lt=1.0,
        description="the site threshold keeps this sensitivity (on its interval's lower side "
        "where the sample allows)",
    )
    prevalence: float | None = Field(
        None, gt=0.0, lt=1.0, description="the site's pneumonia prevalence: prior-shift correction"
    )
    recalibrate_batchnorm: bool = Field(
        False, description="re-estimate BatchNorm statistics on the site's images (AdaBN)"
    )
    seed: int = 0


class AdaptSettings(_Section):
    """`pneumo adapt FOLDER --site NAME`: label-free prevalence adaptation (pneumo/adapt.py)."""

    min_images: int = Field(100, ge=20, description="refuse folders with fewer images")
    max_flag_rate: float = Field(
        0.2, gt=0.0, le=1.0, description="refuse when the guard flags more of the site's images"
    )
    max_interval_width: float = Field(
        0.25, gt=0.0, le=1.0, description="refuse when the prevalence's 95 % interval is wider"
    )
    min_sensitivity: float = Field(
        0.95, gt=0.0, lt=1.0,
        description="never move to a point whose sensitivity on simulated sites is lower",
    )
    bootstrap_samples: int = Field(200, ge=20, le=10_000)
    seed: int = 0


class GuardSettings(_Section):
    """`pneumo guard`: the out-of-distribution detector shipped with the model (pneumo/guard.py)."""

    max_val_flag_rate: float = Field(
        0.02, gt=0.0, lt=0.5, description="share of validation images the cut-off may flag"
    )
    probes_per_kind: int = Field(100, ge=5, le=2000, description="foreign images per kind measured")
    seed: int = 0


class ExplainSettings(_Section):
    n_per_group: int = Field(4, ge=1, le=32, description="images per TP/TN/FP/FN group")
    alpha: float = Field(0.4, gt=0.0, lt=1.0, description="heatmap opacity over the radiograph")
    seed: int = 0


GateMetric = Literal["roc_auc", "accuracy", "sensitivity", "specificity", "f1", "pr_auc"]


class RegistrySettings(_Section):
    """The promotion gate: floors every new model must reach, and how far it may trail the champion."""

    model_name: str = Field("pneumo-cnn", min_length=1, pattern=r"^[A-Za-z0-9][\w.-]*$")
    min_roc_auc: float = Field(0.90, ge=0.0, le=1.0, description="test ROC-AUC floor")
    min_sensitivity: float = Field(0.85, ge=0.0, le=1.0, description="test sensitivity floor")
    min_specificity: float = Field(0.70, ge=0.0, le=1.0, description="test specificity floor")
    min_counterfactual_sensitivity: float = Field(
        0.80, ge=0.0, lt=1.0,
        description="sensitivity when pneumonia radiographs get the normal class's acquisition "
        "look (metrics/stress.json counterfactual, validation split)",
    )
    min_counterfactual_specificity: float = Field(
        0.70, ge=0.0, lt=1.0,
        description="specificity when normal radiographs get the pneumonia class's look",
    )
    margin: float = Field(
        0.01, ge=0.0, description="non-inferiority: how much worse than the champion is tolerated"
    )
    primary_metrics: list[GateMetric] = Field(
        default_factory=lambda: ["roc_auc", "accuracy"],
        min_length=1,
        description="metrics on which the challenger must not trail the champion by > margin",
    )

    @field_validator("min_roc_auc", "min_sensitivity", "min_specificity")
    @classmethod
    def _floor_attainable(cls, value: float) -> float:
        if value >= 1.0:
            raise ValueError(
                "a floor of 1.0 demands a perfect test score, so no model could ever be "
                "promoted: use a value below 1, e.g. 0.9"
            )
        return value

    @field_validator("margin")
    @classmethod
    def _margin_meaningful(cls, value: float) -> float:
        if value >= 1.0:
            raise ValueError(
                "a margin of 1 or more lets any challenger replace the champion, however bad: "
                "use a small value such as 0.01"
            )
        return value

    @field_validator("primary_metrics")
    @classmethod
    def _metrics_unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("list each metric once")
        return value


class ScoreSettings(_Section):
    """`pneumo score`: a large folder scored in chunks on a Dask cluster, resumable by chunk."""

    chunk_size: int = Field(500, ge=1, le=100_000, description="images per task")
    dask_address: str | None = Field(
        None, description="Dask scheduler, e.g. tcp://dask-scheduler:8786; null = a local cluster"
    )
    n_workers: int = Field(0, ge=0, description="local cluster processes; 0 = one per CPU core")
    threads_per_worker: int = Field(1, ge=1, le=64, description="also the torch threads per task")
    batch_size: int = Field(64, ge=1, le=4096)
    output: Path = Field(Path("scores/scores.parquet"), description=".parquet or .csv")
    work_dir: Path = Field(
        Path("scores/chunks"), description="one result per chunk; a rerun skips the done ones"
    )

    @field_validator("output")
    @classmethod
    def _known_format(cls, value: Path) -> Path:
        if value.suffix.lower() not in (".parquet", ".csv"):
            raise ValueError(f"'{value}' must end in .parquet or .csv")
        return value


class ServeSettings(_Section):
    """The BentoML diagnostic service (serving/): limits, batching, referral rule, where it runs."""

    host: str = Field(
        "127.0.0.1", min_length=1, description="`make serve` address; 0.0.0.0 exposes it"
    )
    port: int = Field(3000, ge=1, le=65535)
    workers: int = Field(
        1, ge=1, le=64, description="model worker processes; torch threads = cores / workers"
    )
    adaptive_batching: bool = Field(
        True, description="group concurrent requests into one model call"
    )
    max_batch_size: int = Field(32, ge=1, le=1024, description="images per model call")
    max_latency_ms: int = Field(
        5000,
        ge=10,
        le=600_000,
        description="a queued image is answered 503 after waiting this long",
    )
    max_request_bytes: int = Field(20_000_000, ge=1024, description="larger bodies get 413")
    max_json_bytes: int = Field(
        65_536, ge=1024, description="JSON routes (/feedback): larger bodies get 413"
    )
    max_header_bytes: int = Field(
        16_384, ge=1024, le=1_048_576, description="request line and headers; more get 431"
    )
    max_pixels: int = Field(
        50_000_000, ge=4096, description="pixels, and decoded bytes, from the header; more get 413"
    )
    min_side: int = Field(64, ge=1, description="narrower or shorter images get 422")
    max_batch_files: int = Field(64, ge=1, le=1024, description="radiographs per /predict_batch")
    max_concurrency: int = Field(
        64, ge=1, description="requests being decoded and predicted at once; more get 503"
    )
    max_uploads: int = Field(
        256, ge=1, description="request bodies being received at once; more get 503"
    )
    read_timeout_s: float = Field(
        15.0, gt=0, le=600, description="a request body must arrive within this; else 408"
    )
    bentoml_home: Path = Field(
        Path(".bentoml"), description="BentoML model and Bento store; relative to the workspace"
    )


class DicomSettings(_Section):
    """The DICOM node (serving/dicom/): `pneumo dicom-listen` and `pneumo dicom-pull`."""

    ae_title: str = Field("PNEUMO", min_length=1, max_length=16, pattern=r"^[ -~]*[!-~][ -~]*$",
                          description="the listener's application entity title")  # fmt: skip
    host: str = Field("127.0.0.1", min_length=1, description="listen address; 0.0.0.0 for all")
    port: int = Field(11112, ge=0, le=65535, description="the listener's DICOM port (0: any free)")
    max_associations: int = Field(
        16, ge=1, le=256, description="associations served at once; more are rejected (busy)"
    )
    network_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="an association silent this long is closed"
    )
    destination: str | None = Field(
        None,
        pattern=r"^[ -~]{1,16}@[^:@\s]+:\d{1,5}$",
        description="AE_TITLE@host:port that receives the results by C-STORE (null: none)",
    )
    stow_url: str | None = Field(
        None, description="a DICOMweb root (http://pacs/dicom-web) that receives them by STOW-RS"
    )
    overlay: bool = Field(True, description="send a Grad-CAM Secondary Capture beside the report")
    overlay_size: int = Field(512, ge=64, le=4096, description="the overlay's side in pixels")
    retry_initial_s: float = Field(
        5.0, gt=0, description="first wait before resending to a destination that was down"
    )
    retry_max_s: float = Field(600.0, gt=0, description="the longest wait between two attempts")
    metrics_port: int = Field(
        9112, ge=0, le=65535, description="Prometheus /metrics of the listener (0: none)"
    )


DriftMethod = Literal["wasserstein", "ks", "psi", "jensenshannon", "kl_div", "anderson"]


class MonitorSettings(_Section):
    """The prediction log of the service and the `monitor` flow that reads it (pneumo/monitor/)."""

    enabled: bool = Field(True, description="log every answered prediction to the store")
    site: str = Field(
        "default", min_length=1, max_length=64, description="where this service answers, per row"
    )
    store_url: str = Field(
        "sqlite:///monitor/predictions.db",
        min_length=1,
        description="SQLAlchemy URL; a relative sqlite path is relative to the workspace",
    )
    store_schema: str = Field(
        "pneumo_monitor", pattern=r"^[a-z_][a-z0-9_]*$", description="PostgreSQL schema"
    )
    keep_images: bool = Field(False, description="keep uploads (content-addressed, sha256)")
    image_dir: Path = Field(Path("monitor/images"), description="kept uploads; workspace-relative")
    image_retention_days: float = Field(30.0, gt=0, description="kept uploads older are deleted")
    max_kept_images: int = Field(100_000, ge=1, description="beyond this the oldest are deleted")
    flush_interval_s: float = Field(2.0, gt=0, le=300, description="queued rows written this often")
    flush_rows: int = Field(256, ge=1, le=100_000, description="rows per write")
    queue_rows: int = Field(10_000, ge=1, description="rows waiting in memory; more are lost")
    buffer_file: Path = Field(
        Path("monitor/buffer.jsonl"), description="rows kept while the store is down"
    )
    buffer_rows: int = Field(100_000, ge=1, description="rows the buffer file holds; more are lost")
    retry_s: float = Field(10.0, gt=0, le=3600, description="wait before retrying a down store")
    window_hours: float = Field(168.0, gt=0, description="the monitor flow's recent window")
    min_predictions: int = Field(100, ge=1, description="fewer in the window: not enough data")
    min_feedback: int = Field(20, ge=1, description="reviewed cases needed for live metrics")
    drift_method: DriftMethod = Field("wasserstein", description="Evidently's drift method")
    drift_threshold: float | None = Field(
        0.3, gt=0, description="drift when the score passes this; null = Evidently's default"
    )
    input_drift_warn_share: float = Field(
        0.2, gt=0, le=1, description="share of drifted input statistics that warns"
    )
    input_drift_alert_share: float = Field(
        0.5, gt=0, le=1, description="share of drifted input statistics that alerts"
    )
    positive_rate_warn: float = Field(0.1, gt=0, le=1, description="|window - reference| warns")
    positive_rate_alert: float = Field(0.2, gt=0, le=1, description="|window - reference| alerts")
    prevalence_warn: float = Field(
        0.1, ge=0, le=1,
        description="estimated prevalence's interval this far from the reference's warns",
    )
    prevalence_alert: float = Field(0.25, ge=0, le=1, description="... this far alerts")
    ood_rate_warn: float = Field(
        0.05, gt=0, le=1, description="out-of-distribution share above the reference's warns"
    )
    ood_rate_alert: float = Field(0.15, gt=0, le=1)
    referral_rate_warn: float = Field(
        0.1, gt=0, le=1, description="referred share above the reference's warns"
    )
    referral_rate_alert: float = Field(0.25, gt=0, le=1)
    retrain_on_alert: bool = Field(False, description="an alert starts the retrain deployment")
    report_dir: Path = Field(
        Path("reports/monitor"), description="HTML reports; workspace-relative"
    )

    @model_validator(mode="after")
    def _warn_below_alert(self) -> MonitorSettings:
        for name in ("input_drift", "positive_rate", "ood_rate", "referral_rate"):
            warn_key = f"{name}_warn_share" if name == "input_drift" else f"{name}_warn"
            alert_key = warn_key.replace("warn", "alert")
            if getattr(self, warn_key) > getattr(self, alert_key):
                raise ValueError(f"{warn_key} must not exceed {alert_key}")
        return self


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
