"""The engine that runs the network's forward pass at inference: torch, OpenVINO or ONNX Runtime.

The model file (weights + metadata, pneumo/models) stays the only source of truth: when a model
is loaded for serving or batch scoring, the network is exported to ONNX (seconds; the bytes are
cached under ``$XDG_CACHE_HOME/pneumo/onnx``, keyed by the weights, the code and the exporter's
version, so the pipeline's later stages skip it) and compiled by the chosen runtime, then
checked against torch on probe images before it is used. The result is called like the torch
module, standardised pixels (N, 1, S, S) -> logits (N,), so
:func:`pneumo.inference.predict_proba` stays the one way to probabilities.

``model.runtime: auto`` is OpenVINO on a CPU and torch on a GPU. An exported network computes
in fp32 and equals torch fp32 to 1e-4 (checked at load, tested on real radiographs), except where
the model carries evidence for bf16: OpenVINO's bf16 is about twice as fast but moves
probabilities by up to ~1e-2, so it runs only where the stress stage measured it against fp32 on
every clean, shifted and counterfactual validation image within ``stress.reduced_precision``'s
bounds (models/precision.json, pneumo/evaluation/precision.py) and the CPU computes bf16 natively
(``model.precision: auto``). At the batch sizes a service sees (1-8), OpenVINO fp32 is 2-3x
faster than torch bf16 on this 2-core CPU. Grad-CAM needs gradients and runs in torch.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from pneumo.accel import Accelerator, native_bf16
from pneumo.errors import ConfigError, PneumoError

log = logging.getLogger(__name__)

RuntimeSetting = Literal["auto", "torch", "openvino", "onnxruntime"]
Run = Callable[[np.ndarray], list[np.ndarray]]  # pixels -> the network's outputs
EXPORTED = ("openvino", "onnxruntime")
# Largest gap allowed between the exported network's probabilities and torch fp32's.
TOLERANCE = 1e-4
FP32 = Accelerator("cpu", "fp32")
PROBE_IMAGES = 8
EXPORTER_LOGGERS = ("onnxscript", "onnx_ir")
INSTALL_HINT = "pip install openvino==2026.4.1 onnxruntime==1.32.0 onnx==1.23.2 onnxscript==0.7.2"


class RuntimeMismatchError(PneumoError):
    """The exported network does not compute what the torch network computes."""


class ExportedNetwork(nn.Module):
    """A network compiled by another runtime, called like the torch module it came from."""

    def __init__(
        self,
        run: Run,
        image_size: int,
        describe: str,
        features: bool = False,
    ) -> None:
        super().__init__()
        self.run = run
        self.image_size = image_size  # predict_proba checks images against it
        self.description = describe
        self.features = features  # exported with the guard's features as a second output

    def _outputs(self, pixels: torch.Tensor) -> list[np.ndarray]:
        # One grey channel: channels_last and contiguous are the same bytes, so no copy here.
        array = np.ascontiguousarray(pixels.detach().to("cpu", torch.float32).numpy())
        return self.run(array)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = self._outputs(pixels)[0]
        return torch.from_numpy(np.asarray(logits, dtype=np.float32).reshape(-1))

    def with_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, pooled block features) from the one forward pass (pneumo.models.WithFeatures)."""
        if not self.features:
            raise RuntimeError("this network was exported without features: compile_network(...,"
                               " features=True)")  # fmt: skip
        logits, pooled = self._outputs(pixels)[:2]
        return (torch.from_numpy(np.asarray(logits, dtype=np.float32).reshape(-1)),
                torch.from_numpy(np.asarray(pooled, dtype=np.float32)))  # fmt: skip

    def extra_repr(self) -> str:
        return self.description


def resolve_runtime(setting: str, accel: Accelerator) -> str:
    """``auto`` -> openvino on a CPU, torch elsewhere; an exported runtime needs the CPU."""
    if setting == "auto":
        return "openvino" if accel.device_type == "cpu" else "torch"
    if setting in EXPORTED and accel.device_type != "cpu":
        raise ConfigError(
            f"model.runtime {setting} runs on the CPU, but model.device resolved to "
            f"{accel.device}: set model.runtime to torch (or auto) for a GPU"
        )
    if setting not in ("torch", *EXPORTED):
        raise ConfigError(f"unknown model.runtime '{setting}': choose auto, torch, {EXPORTED}")
    return setting


def export_onnx(model: nn.Module, image_size: int, features: bool = False) -> bytes:
    """The network as an ONNX model with a dynamic batch dimension (torch's dynamo exporter);
    with ``features``, its pooled block features are a second output (the input guard's).

    The export takes seconds on 2 cores and every pipeline stage that loads the model needs it,
    so its bytes are kept in a cache keyed by everything they depend on (:func:`_export_key`).
    """
    # Looked up, not imported: importing onnxscript takes ~2 s, and a cached export needs none.
    if any(importlib.util.find_spec(name) is None for name in ("onnx", "onnxscript")):
        raise ConfigError(f"exporting to ONNX needs onnx and onnxscript: {INSTALL_HINT}")
    cached = _cache_file(model, image_size, features)
    if cached is not None and cached.is_file():
        with contextlib.suppress(OSError):
            onnx = cached.read_bytes()
            cached.touch()  # recently used: pruned last
            return onnx
    onnx = _export(model, image_size, features)
    if cached is not None:
        _keep(cached, onnx)
    return onnx


# The newest exports kept in the cache (a 128-pixel network's is ~5 MB).
CACHE_KEEP = 32


def _cache_file(model: nn.Module, image_size: int, features: bool) -> Path | None:
    """Where this export is cached: ``$PNEUMO_CACHE_DIR`` (``off``: no cache), else
    ``$XDG_CACHE_HOME/pneumo`` or ``~/.cache/pneumo``, folder ``onnx``."""
    try:
        root = os.environ.get("PNEUMO_CACHE_DIR") or str(
            Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pneumo")
    except RuntimeError:  # no home folder (some containers): no cache
        root = "off"
    if root == "off":
        return None
    return Path(root) / "onnx" / f"{_export_key(model, image_size, features)}.onnx"


def _export_key(model: nn.Module, image_size: int, features: bool) -> str:
    """SHA-256 of what the exported bytes depend on: the weights and buffers, the architecture,
    the code that defines the graph (pneumo/models and this module) and the exporter's version."""
    digest = hashlib.sha256(f"{image_size} {features} {type(model).__qualname__} {model!r}".encode())
    for package in ("torch", "onnxscript", "onnx"):
        digest.update(f"{package} {importlib.metadata.version(package)}".encode())
    code = Path(__file__).resolve().parents[1] / "models"
    for source in (Path(__file__).resolve(), *sorted(code.glob("*.py"))):
        digest.update(source.read_bytes())
    for name, tensor in model.state_dict().items():
        array = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name} {array.dtype} {tuple(array.shape)}".encode())
        digest.update(array.view(-1).view(torch.uint8).numpy().tobytes() if array.numel() else b"")
    return digest.hexdigest()


def _keep(path: Path, onnx: bytes) -> None:
    """Write ``onnx`` atomically and prune all but the newest CACHE_KEEP; a cache that cannot be
    written (a read-only container) only costs the next export its seconds."""
    from pneumo.workspace import atomic_path

    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(onnx)
        kept = sorted(path.parent.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in kept[CACHE_KEEP:]:
            old.unlink(missing_ok=True)
    except OSError as exc:
        log.debug("ONNX cache not written (%s): %s", path.parent, exc)


def _export(model: nn.Module, image_size: int, features: bool) -> bytes:
    """torch's dynamo exporter, quiet."""
    network = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)
    if features:
        from pneumo.models import with_features

        network = with_features(network)
    example = torch.zeros(2, 1, image_size, image_size)
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings(), _quiet(EXPORTER_LOGGERS):
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter
        program = torch.onnx.export(
            network,
            (example,),
            dynamo=True,
            input_names=["pixels"],
            output_names=["logits", "features"] if features else ["logits"],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    return program.model_proto.SerializeToString()


@contextlib.contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    """The exporter's optimiser logs a dozen INFO lines per export: keep them to warnings."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.level, logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _openvino(onnx: bytes, threads: int, precision: str,
              calibration: np.ndarray | None = None) -> Run:  # fmt: skip
    try:
        import openvino as ov
    except ImportError as exc:
        raise ConfigError(f"model.runtime openvino needs OpenVINO: {INSTALL_HINT}") from exc
    network = ov.Core().read_model(onnx, b"")
    if precision == "int8":
        network = _quantized(network, calibration)
    return openvino_run(network, threads, precision)


def openvino_run(network: Any, threads: int, precision: str = "fp32") -> Run:
    """An OpenVINO network (read or quantised) compiled with the service's CPU settings."""
    import openvino as ov

    config = {
        # OpenVINO defaults to bf16 on a CPU that has it: fp32 must be asked for.
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",  # one stream: one request at a time uses every thread
        "ENABLE_CPU_PINNING": False,  # the cores are shared with decoding and other processes
    }
    compiled = ov.Core().compile_model(network, "CPU", config)
    local = threading.local()  # an infer request serves one thread at a time

    def run(pixels: np.ndarray) -> list[np.ndarray]:
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = compiled.create_infer_request()
        result = request.infer({0: pixels}, share_inputs=True)
        return [result[i] for i in range(len(result))]

    return run


def _quantized(network: Any, calibration: np.ndarray | None) -> Any:
    """NNCF post-training int8 quantisation, its ranges calibrated on ``calibration`` (uint8
    radiographs (N, S, S), standardised as every forward pass does)."""
    if calibration is None or not len(calibration):
        raise ConfigError("int8 needs calibration images (the train split)")
    try:
        import nncf
    except ImportError as exc:
        raise ConfigError("int8 needs NNCF: pip install nncf==3.4.0") from exc
    from pneumo.data.transforms import standardize_one

    with _quiet(("nncf",)):
        dataset = nncf.Dataset(list(calibration), standardize_one)
        return nncf.quantize(network, dataset, subset_size=len(calibration))


def _onnxruntime(onnx: bytes, threads: int) -> Run:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ConfigError(f"model.runtime onnxruntime needs ONNX Runtime: {INSTALL_HINT}") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
    return lambda pixels: session.run(None, {"pixels": pixels})


def export_network(
    model: nn.Module,
    runtime: str,
    precision: str = "fp32",
    threads: int = 0,
    features: bool = False,
    calibration: np.ndarray | None = None,
) -> ExportedNetwork:
    """``model`` exported to ONNX and compiled by ``runtime`` (openvino or onnxruntime), not
    checked: serving uses compile_network. ``precision`` bf16 and int8 (NNCF, calibrated on
    ``calibration``) are OpenVINO's; the stress stage measures them (pneumo/evaluation/precision.py).
    """
    if precision != "fp32" and runtime != "openvino":
        raise ConfigError(f"{runtime} has no {precision} CPU kernels here: use fp32")
    image_size = int(model.image_size)
    threads = threads or torch.get_num_threads()
    onnx = export_onnx(model, image_size, features)
    if runtime == "openvino":
        run = _openvino(onnx, threads, precision, calibration)
    else:
        run = _onnxruntime(onnx, threads)
    described = f"{runtime} {precision}, {threads} threads" + (" (+ features)" if features else "")
    return ExportedNetwork(run, image_size, described, features)


def compile_network(
    model: nn.Module,
    runtime: str,
    accel: Accelerator,
    threads: int = 0,
    features: bool = False,
    evidence: ServedPrecision | None = None,
) -> nn.Module:
    """What runs ``model``'s forward pass: the model itself (torch) or its export, checked
    against torch. ``threads`` 0 uses torch's thread count (:func:`pneumo.accel.configure_threads`).

    The export computes in fp32, unless ``evidence`` (the model's precision.json, written by the
    stress stage) allows bf16, the runtime is OpenVINO, ``model.precision`` resolved to bf16 and
    the CPU computes bf16 natively: then bf16, checked within the evidence's bound. Without
    native bf16 OpenVINO silently computes fp32 (measured on an AVX2-only EPYC), so even an
    explicit ``model.precision: bf16`` gets fp32 there, and says so, rather than a label that
    /metadata would report falsely.
    """
    chosen = resolve_runtime(runtime, accel)
    if chosen == "torch":
        return model
    precision, tolerance = "fp32", TOLERANCE
    if evidence is not None and evidence.precision == "bf16":
        if chosen != "openvino":
            why = f"{chosen} has no bf16"
        elif accel.precision != "bf16":
            why = "model.precision is fp32 here"
        elif not native_bf16(accel.device):
            why = "this CPU has no native bf16 (OpenVINO would compute fp32)"
        else:
            why, precision, tolerance = "", "bf16", evidence.tolerance
        if why:
            log.info("the model's evidence allows bf16, but %s: fp32", why)
    network = export_network(model, chosen, precision, threads, features)
    check_network(model, network, tolerance)
    if accel.precision != precision:
        log.info("model.precision %s: the exported network computes in %s", accel.precision,
                 precision)  # fmt: skip
    log.info("the network runs in %s", network.description)
    return network


@dataclass(frozen=True)
class ServedPrecision:
    """What a model's precision.json allows: the precision and the probability gap it was
    measured within (pneumo/evaluation/precision.py)."""

    precision: str  # fp32 | bf16
    tolerance: float

    @classmethod
    def load(cls, path: Path | None) -> ServedPrecision | None:
        """None when the model has no evidence file (then it runs in fp32)."""
        if path is None or not Path(path).is_file():
            return None
        try:
            verdict = json.loads(Path(path).read_text())
            return cls(str(verdict["serve"]), float(verdict["bounds"]["max_probability_gap"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise RuntimeMismatchError(f"{path} is not a precision verdict: {exc}") from exc


@functools.cache
def probe_images(image_size: int) -> np.ndarray:
    """Fixed radiograph-like uint8 images: a bright blob on a dark field, with noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:image_size, 0:image_size] / image_size
    images = []
    for i in range(PROBE_IMAGES):
        cx, cy, width = 0.3 + 0.05 * i, 0.6 - 0.04 * i, 2.0 + i
        blob = 40 + 150 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) * width)
        images.append(blob + rng.normal(0, 12, (image_size, image_size)))
    return np.clip(images, 0, 255).astype(np.uint8)


def check_network(model: nn.Module, network: nn.Module, tolerance: float = TOLERANCE) -> float:
    """The largest probability gap between ``network`` and torch fp32 on the probe images;
    raises :class:`RuntimeMismatchError` past ``tolerance`` (fp32: :data:`TOLERANCE`)."""
    from pneumo.inference import predict_proba

    images = probe_images(int(model.image_size))
    expected = predict_proba(model, images, accel=FP32)
    got = predict_proba(network, images)
    gap = float(np.max(np.abs(expected - got)))
    if not gap <= tolerance:
        raise RuntimeMismatchError(
            f"the exported network ({network}) differs from torch by {gap:.2e} on the probe "
            f"images (allowed {tolerance:g}): set model.runtime: torch"
        )
    return gap
