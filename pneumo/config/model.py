"""The model sections of params.yaml: model (and its architectures' options), augment, train."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from pneumo.config.base import _Section


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
        description="engine of serving and batch scoring (pneumo/inference/runtime.py); auto: "
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
        batched_only = {
            "aspect_max": 1.0,
            "resample_p": 0.0,
            "jpeg_p": 0.0,
            "border_p": 0.0,
            "sharpen_p": 0.0,
        }
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
