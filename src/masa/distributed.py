"""Processes of one training run: the torchrun process group, who does what, and generation split by rank.

One process (``masa train``) is the world of size 1 and needs no process group. Under ``torchrun`` every
rank holds the same shared state (data position, gate, update RNG, the whole step's rollouts), so every
decision the trainer takes is the same pure function of the same inputs on every rank; only generation
(each rank its share of the prompts) and the update (each rank its share of every mini-batch, FSDP2
sharded) are divided. See docs/decisions.md, "Many processes".
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from masa.rollout.engine import generate_together
from masa.rollout.types import GenerationRequest, Rollout, SamplingParams

T = TypeVar("T")

# gloo carries the CPU collectives (object gathers, CPU-only runs), nccl the GPU ones.
GPU_BACKEND = "cpu:gloo,cuda:nccl"


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def share(self, count: int) -> slice:
        """This rank's contiguous share of ``count`` items; shares differ in size by at most one."""
        base, extra = divmod(count, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (a stop request must be seen by all at once)."""
        return self.sum([float(flag)])[0] > 0

    def seed_generation(self, seed: int) -> None:
        """Give each rank its own sampling stream (one process keeps the stream it has)."""
        if self.distributed:
            torch.manual_seed(seed * self.world + self.rank)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order, on every rank (pickled: meant for small objects)."""
        if not self.distributed:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def from_main(self, value: T) -> T:
        """Rank 0's ``value`` on every rank, whatever the others pass (pickled: meant for small objects)."""
        if not self.distributed:
            return value
        box: list[Any] = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
        """Element-wise sum of a vector of numbers over all ranks."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()


SINGLE_PROCESS = Ranks()


def init_ranks(device_choice: str = "auto") -> Ranks:
    """Join the torchrun process group when launched by torchrun; a plain process is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():  # the caller set the group up itself
        return Ranks(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank)
    if world == 1:
        return SINGLE_PROCESS
    on_gpu = device_choice != "cpu" and torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(local_rank)
    # A rank that dies leaves the others blocked in a collective; torchrun then stops them and reports
    # the failed rank. The timeout only bounds a hang torchrun cannot see.
    dist.init_process_group(GPU_BACKEND if on_gpu else "gloo", timeout=datetime.timedelta(minutes=30))
    return Ranks(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank)


def close_ranks(ranks: Ranks) -> None:
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()


class NullWriter:
    """What ranks other than 0 log to: the run folder's files are written once, by rank 0."""

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        pass

    def append(self, name: str, rows: list[dict[str, Any]]) -> None:
        pass

    def close(self) -> None:
        pass


class SplitEngine:
    """Each rank generates its share of the prompts with its own engine; every rank gets every group back.

    A problem's whole group is generated on one rank, so per-problem sampling needs no communication.
    Gathering the groups gives every rank the same step data, from which rewards, advantages, gating,
    refill and cutoff are computed identically everywhere.
    """

    def __init__(self, engine: Any, ranks: Ranks):
        self.engine = engine
        self.ranks = ranks

    def generate(
        self,
        prompts: Sequence[list[int]],
        n: int,
        params: SamplingParams,
        max_tokens: Sequence[int] | None = None,
        seed: int | None = None,
    ) -> list[list[Rollout]]:
        return self.generate_many([GenerationRequest(prompts, n, params, max_tokens, seed)])[0]

    def generate_many(self, requests: Sequence[GenerationRequest]) -> list[list[list[Rollout]]]:
        shares = [self.ranks.share(len(r.prompts)) for r in requests]
        local_requests = [
            GenerationRequest(
                list(r.prompts[mine]),
                r.n,
                r.params,
                None if r.max_tokens is None else list(r.max_tokens[mine]),
                # Distinct samples on each rank, still reproducible from the shared seed.
                None if r.seed is None else r.seed * self.ranks.world + self.ranks.rank,
            )
            for r, mine in zip(requests, shares, strict=True)
        ]
        wanted = [r for r in local_requests if r.prompts]
        generated = iter(generate_together(self.engine, wanted) if wanted else [])
        local = [next(generated) if r.prompts else [] for r in local_requests]
        parts = self.ranks.gather(local)
        return [[group for part in parts for group in part[k]] for k in range(len(requests))]

    def __getattr__(self, name: str) -> Any:
        # Weight sync (load_weights, weights_version) and anything else reach the wrapped engine.
        return getattr(self.engine, name)
