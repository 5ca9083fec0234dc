"""Memory a training step of an MBUNet holds, and memory a device has free.

Checked before training starts, so a size or batch that cannot fit fails at once with a
message instead of minutes later while allocating. The activations are measured, not
guessed: the net runs on the ``meta`` device (shapes only, milliseconds at any size)
and autograd's saved-tensor hook counts every tensor kept for the backward pass, the
memory that must be alive at once at the end of the forward pass. The backward pass
adds gradients on top (about a third more on CPU), so this is a lower bound of the peak.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .model import MBUNet


def activation_bytes(net: MBUNet, size: tuple[int, int], batch: int) -> int:
    """Bytes of float32 tensors autograd saves for the backward pass of one training batch of ``net``."""
    with torch.device("meta"):
        twin = MBUNet(**net.hparams())
    twin.train()
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()  # views of one tensor share it: counted once
        storages[storage._cdata] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        twin(torch.empty(batch, net.in_channels, *size, device="meta"))
    return sum(storages.values())


def _cgroup_free() -> int | None:
    """What the container's memory limit (cgroup v2) still allows, if it sets one."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((root / "memory.current").read_text())
    except (OSError, ValueError):
        return None


def free_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device, or available RAM for the CPU; None where it cannot be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            pass
    cgroup = _cgroup_free()
    if available is None or cgroup is None:
        return available if cgroup is None else cgroup
    return min(available, cgroup)
