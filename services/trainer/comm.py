"""Collective operations between trainer workers: torch.distributed (gloo on CPU, NCCL on
GPU) for several ranks, trivial local versions for one. JSON values travel as byte tensors,
so nothing is ever pickled between workers."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import orjson
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


class Comm:
    """Rank, world size and the few collectives the trainer needs."""

    def __init__(self, rank: int = 0, world: int = 1, device: torch.device | None = None) -> None:
        self.rank = rank
        self.world = world
        self.device = device or torch.device("cpu")

    @classmethod
    def init(cls, rank: int, world: int, addr: str, port: int, device: torch.device,
             timeout_s: float) -> Comm:
        """Join the process group (a no-op for a single worker)."""
        if world > 1:
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, init_method=f"tcp://{addr}:{port}", rank=rank,
                                    world_size=world, timeout=timedelta(seconds=timeout_s))
            log.info("rank %d of %d joined the %s process group", rank, world, backend)
        return cls(rank, world, device)

    @property
    def leader(self) -> bool:
        """True on rank 0, which evaluates, saves and announces."""
        return self.rank == 0

    def close(self) -> None:
        """Leave the process group."""
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(tensor)
        return [float(v) for v in tensor.tolist()]

    def minimum(self, values: list[float]) -> list[float]:
        """Element-wise minimum over ranks."""
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
        return [float(v) for v in tensor.tolist()]

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """In-place element-wise sum over ranks of each tensor (flattened into one call)."""
        if self.world == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        offset = 0
        for tensor in tensors:
            count = tensor.numel()
            tensor.copy_(flat[offset:offset + count].view_as(tensor))
            offset += count

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite `tensors` on every rank with rank 0's values."""
        if self.world == 1:
            return
        for tensor in tensors:
            dist.broadcast(tensor, src=0)

    def broadcast_json(self, value: Any) -> Any:
        """Rank 0's JSON-serialisable `value`, on every rank."""
        if self.world == 1:
            return value
        data = orjson.dumps(value) if self.leader else b""
        size = torch.tensor([len(data)], dtype=torch.int64, device=self.device)
        dist.broadcast(size, src=0)
        buffer = torch.zeros(int(size.item()), dtype=torch.uint8, device=self.device)
        if self.leader:
            buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        dist.broadcast(buffer, src=0)
        return orjson.loads(buffer.cpu().numpy().tobytes())

    def gather_json(self, value: Any) -> list[Any]:
        """Every rank's JSON-serialisable `value`, in rank order (on every rank)."""
        if self.world == 1:
            return [value]
        data = orjson.dumps(value)
        size = torch.tensor([len(data)], dtype=torch.int64, device=self.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world)]
        dist.all_gather(sizes, size)
        longest = max(int(s.item()) for s in sizes)
        buffer = torch.zeros(longest, dtype=torch.uint8, device=self.device)
        if data:
            buffer[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        buffers = [torch.zeros_like(buffer) for _ in range(self.world)]
        dist.all_gather(buffers, buffer)
        return [orjson.loads(bytes(b[: int(s.item())].cpu().numpy().tobytes()))
                for b, s in zip(buffers, sizes, strict=True)]
