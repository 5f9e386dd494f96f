"""What judges a trained model: tracking, evaluate, compare, stress, calibrate, adapt, guard,
explain."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pneumo.config.base import _Section


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


class ReducedPrecisionSettings(_Section):
    """Issue 26: the network runs at reduced precision only where the stress stage's evidence,
    on the validation split and its shifted and counterfactual copies, stays within these."""

    candidates: tuple[Literal["bf16", "int8"], ...] = Field(
        ("bf16", "int8"),
        description="OpenVINO bf16 (measured only where the CPU computes bf16 natively) and int8 "
        "(NNCF post-training quantisation calibrated on the train split)",
    )
    max_probability_gap: float = Field(
        0.02, gt=0.0, lt=1.0, description="largest |p - p_fp32| on any image: a fifth of the "
        "referral margin, so the band keeps its meaning",
    )  # fmt: skip
    max_flip_rate: float = Field(
        0.002, ge=0.0, lt=1.0, description="share of images whose call changes at the threshold"
    )
    max_auc_drop: float = Field(0.002, ge=0.0, lt=1.0, description="on the clean set and any shift")
    max_cue_effect_change: float = Field(
        0.05, ge=0.0, description="counterfactual cue effect (logits, severity 2): the shortcut "
        "meter must not move",
    )  # fmt: skip
    calibration_images: int = Field(300, ge=10, le=5000, description="int8: train images")


class StressSettings(_Section):
    """`pneumo stress`: the validation split under a fixed battery of acquisition shifts."""

    seed: int = Field(0, description="draws of the random shifts (noise, marker placement)")
    min_sensitivity: float = Field(
        0.95,
        gt=0.0,
        lt=1.0,
        description="the threshold-rule table (plots/stress/detail.json operating_points) recommends "
        "the rule that keeps this sensitivity on every simulated site",
    )
    reduced_precision: ReducedPrecisionSettings = ReducedPrecisionSettings()


class CalibrateSettings(_Section):
    """`pneumo calibrate FOLDER --site NAME`: a registry version adapted to a new site's sample."""

    min_per_class: int = Field(30, ge=10, description="refuse samples with fewer images per class")
    folds: int = Field(5, ge=2, le=20, description="patient-grouped cross-fitting folds")
    min_sensitivity: float = Field(
        0.95,
        gt=0.0,
        lt=1.0,
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
    """`pneumo adapt FOLDER --site NAME`: label-free prevalence adaptation (pneumo/site/adapt.py)."""

    min_images: int = Field(100, ge=20, description="refuse folders with fewer images")
    max_flag_rate: float = Field(
        0.2, gt=0.0, le=1.0, description="refuse when the guard flags more of the site's images"
    )
    max_interval_width: float = Field(
        0.25, gt=0.0, le=1.0, description="refuse when the prevalence's 95 % interval is wider"
    )
    min_sensitivity: float = Field(
        0.95,
        gt=0.0,
        lt=1.0,
        description="never move to a point whose sensitivity on simulated sites is lower",
    )
    bootstrap_samples: int = Field(200, ge=20, le=10_000)
    seed: int = 0


class GuardSettings(_Section):
    """`pneumo guard`: the out-of-distribution detector shipped with the model (pneumo/inference/guard.py)."""

    max_val_flag_rate: float = Field(
        0.02, gt=0.0, lt=0.5, description="share of validation images the cut-off may flag"
    )
    probes_per_kind: int = Field(100, ge=5, le=2000, description="foreign images per kind measured")
    seed: int = 0


class ExplainSettings(_Section):
    n_per_group: int = Field(4, ge=1, le=32, description="images per TP/TN/FP/FN group")
    alpha: float = Field(0.4, gt=0.0, lt=1.0, description="heatmap opacity over the radiograph")
    seed: int = 0
