"""Device and precision detection: bf16 only where the hardware has it, explicit choices honoured."""

from __future__ import annotations

import pytest
import torch

from pneumo import accel
from pneumo.errors import ConfigError


@pytest.fixture()
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(accel, "_mps_available", lambda: False)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "fma"}, "fp32"),  # a plain AVX2 CPU emulates bf16: slower than fp32
        ({"avx512f", "avx512_bf16"}, "bf16"),  # Cooper Lake and later
        ({"avx512f", "amx_tile", "amx_bf16"}, "bf16"),  # Sapphire Rapids (AMX)
        ({"asimd", "bf16"}, "bf16"),  # Arm Neoverse V1 and later
        (set(), "fp32"),  # the OS does not say: never assume
    ],
)
def test_auto_precision_follows_the_cpu_flags(
    monkeypatch: pytest.MonkeyPatch, no_gpu: None, flags: set[str], expected: str
) -> None:
    monkeypatch.setattr(accel, "cpu_flags", lambda: frozenset(flags))
    resolved = accel.resolve("auto", "auto")
    assert resolved == accel.Accelerator("cpu", expected)
    assert resolved.channels_last


def test_explicit_precision_is_honoured_and_emulated_bf16_warns(
    monkeypatch: pytest.MonkeyPatch, no_gpu: None, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(accel, "cpu_flags", lambda: frozenset({"avx2"}))
    assert accel.resolve("cpu", "fp32").precision == "fp32"
    with caplog.at_level("WARNING"):
        assert accel.resolve("cpu", "bf16").precision == "bf16"
    assert "emulated" in caplog.text


def test_auto_device_prefers_cuda_then_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert accel.resolve("auto", "auto") == accel.Accelerator("cuda", "bf16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(accel, "_mps_available", lambda: True)
    resolved = accel.resolve("auto", "auto")
    assert resolved == accel.Accelerator("mps", "fp32") and not resolved.channels_last


def test_a_missing_device_is_a_clear_error(no_gpu: None) -> None:
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        accel.resolve("cuda", "auto")
    with pytest.raises(ConfigError, match="MPS"):
        accel.resolve("mps", "auto")


def test_cpu_flags_are_read_from_proc_cpuinfo() -> None:
    flags = accel.cpu_flags()
    assert isinstance(flags, frozenset)
    # Every x86-64 Linux CPU lists sse2; elsewhere the set may legitimately be empty.
    import platform

    if platform.system() == "Linux" and platform.machine() == "x86_64":
        assert "sse2" in flags


def test_autocast_runs_convolutions_in_bf16_and_fp32_leaves_them_alone() -> None:
    conv = torch.nn.Conv2d(1, 4, 3)
    x = torch.randn(2, 1, 8, 8)
    with accel.Accelerator("cpu", "bf16").autocast():
        assert conv(x).dtype == torch.bfloat16
    with accel.Accelerator("cpu", "fp32").autocast():
        assert conv(x).dtype == torch.float32


def test_configure_threads_uses_every_available_core_by_default() -> None:
    before = torch.get_num_threads()
    try:
        assert accel.configure_threads(0) == accel.available_cores()
        assert accel.configure_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_torch_threads_are_set_for_the_block_and_restored_even_on_error() -> None:
    """The service's model call runs torch on one thread around an exported network (its
    spinning OpenMP workers would take the cores decoding needs), then gives them back."""
    import torch

    from pneumo.accel import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("a failed model call")
    assert torch.get_num_threads() == before
