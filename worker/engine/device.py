"""Where the engine runs and in what precision: one place for the trainer, the sampler and the worker."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} was asked for but no CUDA GPU is visible; use 'cpu' or 'auto'")
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
            raise ValueError(f"precision='bf16' is not supported on {device}; use 'fp32' or 'auto'")
        return torch.bfloat16
    if name == "auto":
        return torch.bfloat16 if supported else None
    raise ValueError(f"precision must be auto, fp32 or bf16, got {name!r}")
