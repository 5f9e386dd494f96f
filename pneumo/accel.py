"""Where and in which precision the network runs: detected from the machine, never assumed.

``auto`` picks CUDA when present (then MPS), else the CPU; bf16 autocast where the hardware
computes bf16 natively (CUDA with bf16 support, or a CPU with AVX512-BF16 or AMX, read from its
flags), fp32 elsewhere: emulated bf16 is slower than fp32 and loses precision for nothing.
Training (``train.device``/``train.precision``) and inference (``model.device``/``model.precision``)
resolve their settings here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from pneumo.errors import ConfigError

log = logging.getLogger(__name__)

DeviceSetting = Literal["auto", "cpu", "cuda", "mps"]
PrecisionSetting = Literal["auto", "fp32", "bf16"]
# CPU flags (Linux /proc/cpuinfo) that mean native bf16 matrix arithmetic.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # "bf16": Arm (e.g. Neoverse V1)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags; empty where the OS does not say (then bf16 is never assumed)."""
    cpuinfo = Path("/proc/cpuinfo")
    if platform.system() != "Linux" or not cpuinfo.is_file():
        return frozenset()
    flags: set[str] = set()
    for line in cpuinfo.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


def available_cores() -> int:
    """CPU cores this process may run on (the container's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """``threads`` torch threads inside the block: torch's count is per process, so only for a
    caller that is the process's one torch user at the time (the service's model thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def configure_threads(threads: int = 0) -> int:
    """Use ``threads`` torch threads (0 = one per available core); call once per process."""
    wanted = threads or available_cores()
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    return wanted


@dataclass(frozen=True)
class Accelerator:
    """A resolved device and precision, with the autocast context that applies them."""

    device: str  # "cpu", "cuda", "cuda:1", "mps"
    precision: Literal["fp32", "bf16"]

    @property
    def device_type(self) -> str:
        return torch.device(self.device).type

    @property
    def channels_last(self) -> bool:
        """NHWC lets oneDNN and cuDNN pick their fastest convolutions; MPS gains nothing."""
        return self.device_type in ("cpu", "cuda")

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """bf16 autocast for the forward pass (weights and the loss stay fp32)."""
        if self.precision == "fp32":
            yield
            return
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            yield

    def describe(self) -> str:
        return f"{self.device} {self.precision}" + (" channels_last" if self.channels_last else "")


def resolve_device(setting: str) -> str:
    """``auto`` -> cuda, else mps, else cpu; an unavailable explicit device is an error."""
    cuda, mps = torch.cuda.is_available(), _mps_available()
    if setting == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if setting.startswith("cuda") and not cuda:
        raise ConfigError(f"device '{setting}' is set but torch sees no CUDA GPU: use auto or cpu")
    if setting == "mps" and not mps:
        raise ConfigError("device 'mps' is set but this torch has no MPS backend: use auto or cpu")
    return setting


def native_bf16(device: str, flags: frozenset[str] | None = None) -> bool:
    """Does ``device`` compute bf16 natively?"""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_bf16_supported()
    if kind == "cpu":
        return bool((cpu_flags() if flags is None else flags) & BF16_CPU_FLAGS)
    return False  # MPS: bf16 autocast support is partial; fp32 is the safe default


def resolve(device: str = "auto", precision: str = "auto") -> Accelerator:
    """Turn the settings into an :class:`Accelerator` for this machine."""
    resolved = resolve_device(device)
    if precision == "auto":
        chosen = "bf16" if native_bf16(resolved) else "fp32"
    else:
        chosen = precision
    if chosen == "bf16" and not native_bf16(resolved):
        log.warning(
            "bf16 on %s is emulated here (slow); precision auto would choose fp32", resolved
        )
    return Accelerator(resolved, chosen)  # type: ignore[arg-type]


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
