"""``torchrun`` for the loops that shard over processes (evaluate, predict_files, fit): the process group and
each rank's device.

``torch.distributed`` is imported inside the functions, so importing this module costs nothing.
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn

__all__ = ["dist_context", "pick_device"]


def dist_context(device: torch.device | None) -> tuple[int, int, bool]:
    """(rank, world_size, we_initialized) — initializes the process group from torchrun's env vars."""
    import torch.distributed as dist

    if not dist.is_available():
        return 0, 1, False
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    env = os.environ
    if int(env.get("WORLD_SIZE", "1")) > 1 and "RANK" in env and "MASTER_ADDR" in env:
        use_cuda = (device.type == "cuda") if device is not None else torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def pick_device(model: nn.Module, device: torch.device | None, owns_group: bool) -> torch.device:
    """``device`` if given; else ``cuda:LOCAL_RANK`` in a process group this process started (with CUDA), else
    the model's device."""
    if device is not None:
        return device
    if owns_group and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return next(model.parameters()).device
