"""What happens after training: registry, score, serve, dicom, monitor."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pneumo.config.base import _Section

GateMetric = Literal["roc_auc", "accuracy", "sensitivity", "specificity", "f1", "pr_auc"]


class RegistrySettings(_Section):
    """The promotion gate: floors every new model must reach, and how far it may trail the champion."""

    model_name: str = Field("pneumo-cnn", min_length=1, pattern=r"^[A-Za-z0-9][\w.-]*$")
    min_roc_auc: float = Field(0.90, ge=0.0, le=1.0, description="test ROC-AUC floor")
    min_sensitivity: float = Field(0.85, ge=0.0, le=1.0, description="test sensitivity floor")
    min_specificity: float = Field(0.70, ge=0.0, le=1.0, description="test specificity floor")
    min_counterfactual_sensitivity: float = Field(
        0.80,
        ge=0.0,
        lt=1.0,
        description="sensitivity when pneumonia radiographs get the normal class's acquisition "
        "look (metrics/stress.json counterfactual, validation split)",
    )
    min_counterfactual_specificity: float = Field(
        0.70,
        ge=0.0,
        lt=1.0,
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
        0.1,
        ge=0,
        le=1,
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
