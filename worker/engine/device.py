"""Where the engine runs and in what precision: one place for the trainer, the sampler and the worker."""

from __future__ import annotations

import torch

from worker.engine.errors import ConfigError, DeviceError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:  # torch's own words list every backend it was built with
        raise ConfigError(f"device: got {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device={name!r} was asked for but no CUDA GPU is visible; use 'cpu' or 'auto'")
    return device


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if name == "fp32":
        return None
    supported = (
        torch.cuda.is_bf16_supported() if device.type == "cuda" else torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )
    if name == "bf16":
        if not supported:
            raise DeviceError(f"precision='bf16' is not supported on {device}; use 'fp32' or 'auto'")
        return torch.bfloat16
    if name == "auto":
        return torch.bfloat16 if supported else None
    raise ConfigError(f"precision must be auto, fp32 or bf16, got {name!r}")
