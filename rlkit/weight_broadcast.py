"""Broadcasting the learner's weights to the rollout workers over a process group of their own.

The object-store path (``cluster.weight_sync: object_store``) copies the weights learner device →
CPU state dict → Ray object store → worker device every step. Here learner rank 0 (rank 0 of the
group) and the rollout workers (ranks 1..W) form a process group apart from the learners' own,
and rank 0 broadcasts each tensor straight from where it lives: with NCCL, GPU to GPU, no CPU
round trip; with gloo (CPU runs, and what the tests use), host to host without the object store.

The group is built from a ``TCPStore`` that rank 0 hosts and the ``ProcessGroupGloo`` /
``ProcessGroupNCCL`` classes themselves, so it needs no default process group: the learner's
default group is DeepSpeed's, and a rollout worker has none. The names, shapes and dtypes of the
tensors are sent once, by the driver, when the group is formed (:func:`tensor_specs`); a sync is
then only the tensors, in that order.

NCCL needs each rank on a GPU of its own; two processes sharing one GPU (a one-GPU machine) keep
the object-store path (``auto`` decides, :func:`rlkit.cluster.weight_sync_mode`).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # "float32", "bfloat16", ...

    def empty(self, device: torch.device) -> torch.Tensor:
        return torch.empty(self.shape, dtype=getattr(torch, self.dtype), device=device)


def tensor_specs(state: dict[str, torch.Tensor]) -> list[TensorSpec]:
    """What the receivers allocate, in the order rank 0 sends."""
    return [TensorSpec(name, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in state.items()]


class WeightGroup:
    """One member of the weight-broadcast group: rank 0 sends, every other rank receives."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, device: torch.device, timeout_s: float):
        timeout = datetime.timedelta(seconds=timeout_s)
        self.rank, self.device = rank, device
        self.store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout)
        if device.type == "cuda":
            self.group = dist.ProcessGroupNCCL(self.store, rank, world_size)
        else:
            self.group = dist.ProcessGroupGloo(self.store, rank, world_size, timeout)

    def send(self, state: dict[str, torch.Tensor]) -> int:
        """Broadcast ``state``'s tensors in order (rank 0); the bytes sent."""
        sent = 0
        for tensor in state.values():
            tensor = tensor.detach().contiguous()
            self.group.broadcast(tensor, 0).wait()
            sent += tensor.numel() * tensor.element_size()
        return sent

    def receive(self, specs: list[TensorSpec]) -> dict[str, torch.Tensor]:
        """The tensors rank 0 broadcasts, allocated on this member's device."""
        out = {}
        for spec in specs:
            tensor = spec.empty(self.device)
            self.group.broadcast(tensor, 0).wait()
            out[spec.name] = tensor
        return out

    def close(self) -> None:
        self.group = None
        self.store = None
