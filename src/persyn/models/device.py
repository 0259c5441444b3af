"""The one device and dtype policy: where every model persyn loads runs, and in what precision.

A device left unset is the GPU when there is one, else the CPU. The dtype "auto" (or unset) is bfloat16 on a GPU
that supports it and float32 elsewhere: a CPU multiplies bfloat16 natively only with AVX512-BF16 or AMX, so there
it is asked for by name. Training keeps float32 master weights and runs bfloat16 under autocast on such a GPU.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from persyn.errors import ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def resolve_device(device: str | None = None) -> str:
    """`device` when given; otherwise "cuda" when a GPU is visible, else "cpu"."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def gpu_has_bf16(device: str) -> bool:
    """Whether `device` is a GPU that computes in bfloat16."""
    if not device.startswith("cuda"):
        return False
    import torch

    return bool(torch.cuda.is_bf16_supported())


def is_gpu(device: Any) -> bool:
    """Whether a device (a name or a torch.device) is a CUDA GPU: kernels with a GPU-only fast path ask here."""
    return str(getattr(device, "type", device)).startswith("cuda")


def is_half(dtype: torch.dtype) -> bool:
    """Whether a torch dtype is 16-bit floating point (the precisions GPU-only attention kernels take)."""
    import torch

    return dtype in (torch.float16, torch.bfloat16)


def resolve_dtype(spec: str | None, device: str, *, warn: bool = True) -> torch.dtype:
    """The torch dtype for `spec` ("auto"/None, or a floating dtype's name) on `device`."""
    import torch

    if spec is None or spec == "auto":
        return torch.bfloat16 if gpu_has_bf16(device) else torch.float32
    value = getattr(torch, spec, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ConfigError(f"unknown dtype {spec!r} (use bfloat16, float16 or float32)")
    if warn and value == torch.bfloat16 and device == "cpu" and not cpu_has_bf16():
        log.warning("bfloat16 on this CPU has no native support (AVX512-BF16/AMX) and is slower than float32")
    return value


def dtype_name(spec: str | None, device: str) -> str:
    """resolve_dtype's answer as a name ("bfloat16"), for libraries configured by strings (lm-eval)."""
    return str(resolve_dtype(spec, device, warn=False)).removeprefix("torch.")


def training_precision(bf16: bool | None, device: str) -> tuple[torch.dtype, bool]:
    """(master weights' dtype, bf16 autocast) for fine-tuning: float32 weights, so AdamW updates stay exact; bf16
    mixed precision when `bf16` says so, or (None) on a GPU that supports it."""
    import torch

    return torch.float32, gpu_has_bf16(device) if bf16 is None else bf16


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def empty_gpu_cache() -> None:
    """Hand the GPU memory of dropped tensors back to the driver (no-op without a GPU)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()

