"""Device choice: CUDA when present (one GPU per rank, round robin), else CPU."""

from __future__ import annotations

import torch


def describe_device(device: torch.device) -> str:
    """The device as text for the card (with the GPU name on CUDA)."""
    if device.type == "cuda":
        return f"cuda:{device.index or 0} ({torch.cuda.get_device_name(device)})"
    return "cpu"


def pick_device(setting: str, rank: int) -> torch.device:
    """CUDA when present (one GPU per rank, round robin), else CPU."""
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("LEPTON_TRAINER_DEVICE=cuda but CUDA is not available")
    return torch.device("cuda", rank % torch.cuda.device_count())
