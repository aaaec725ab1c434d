"""`--device` on torch: which device, and the mixed precision that goes with it.

On CUDA, forward and backward run under autocast: bf16 where the GPU computes it (Ampere and later), else fp16
with a gradient scaler (fp16 gradients underflow without one); weights, optimiser state and the loss stay fp32.
On the CPU, bf16 autocast only where the CPU has it natively (`training.config.resolve_precision`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from enclip_qdrant.engine.devices import check_device
from enclip_qdrant.errors import EnclipError


def _mps() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str) -> torch.device:
    """auto: CUDA, else MPS, else the CPU; a device asked for by name that is not here is one clear line."""
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if _mps() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise EnclipError("--device cuda: torch sees no CUDA GPU here (torch.cuda.is_available() is False); "
                          "use --device cpu or auto")
    if name == "mps" and not _mps():
        raise EnclipError("--device mps: this torch has no usable Apple GPU (MPS); use --device cpu or auto")
    return torch.device(name)


def amp_dtype(device: torch.device, cpu_bf16: bool) -> torch.dtype | None:
    """The autocast dtype on `device` (None: full fp32)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_bf16:
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """fp16 needs its gradients scaled; bf16 has fp32's range and does not."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


def precision_name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32") if dtype is not None else "fp32"


def module_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")
