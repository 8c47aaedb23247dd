"""Device choice and mixed precision: CUDA with bf16 autocast when present, the CPU in fp32 otherwise."""

from __future__ import annotations

import contextlib
import os
import platform

import torch

from ..errors import UserError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; 'cpu' / 'cuda' / 'cuda:N' as given (cuda without a GPU is an error)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={device!r} but no CUDA device is available; use 'auto' or 'cpu'")
    if not (device == "cpu" or device.startswith("cuda")):
        raise UserError(f"device={device!r} is not one of {DEVICES} (or cuda:N)")
    return torch.device(device)


def autocast(device: torch.device, *, cpu_bf16: bool = False):
    """bf16 autocast on CUDA; on the CPU fp32 (a no-op context) unless ``cpu_bf16``, the training lever of
    docs/recipe.md (bf16 autocast on the CPU: faster per step on cores with bf16 instructions, other rounding)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if cpu_bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return "cpu"  # no thread count: the same values must give the same bytes under any OMP_NUM_THREADS


def machine_description(device: torch.device) -> str:
    """CPU model, cores, torch version and threads, Python, device: the line every benchmark prints first."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = (f"CPU: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"python {platform.python_version()}, device {device}")
    if device.type == "cuda":
        text += f" ({torch.cuda.get_device_name(device)})"
    return text
