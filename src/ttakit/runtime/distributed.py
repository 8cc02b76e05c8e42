"""torch.distributed support: the same evaluation, its chunks dealt out to ranks.

Launch with ``torchrun --nproc-per-node N -m ttakit evaluate ...`` (and torchrun's usual
rendezvous flags on several nodes). Each rank computes a disjoint set of chunks (no padding,
so no image is counted twice); rank 0 gathers every chunk's logits and skip records, writes
them to its ``--out`` folder if they are not there already (no shared filesystem needed) and
scores them exactly as a single process would. gloo is used on CPU, nccl on GPU, with one GPU
per local rank.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import torch
import torch.distributed as tdist
from torch import Tensor

from ..errors import TTAKitError

__all__ = ["ChunkStore", "DistContext"]

T = TypeVar("T")


class ChunkStore(Protocol):
    """What :meth:`DistContext.gather_chunks` needs of a store (the logits store has it)."""

    def has(self, start: int) -> bool: ...

    def read(self, start: int) -> tuple[dict[str, Tensor], list[tuple[int, str]]]: ...

    def write(self, start: int, payload: dict[str, Tensor], skipped: list[tuple[int, str]]) -> None: ...


@dataclass(frozen=True)
class DistContext:
    """Rank, world size and local rank of this process (1 process: rank 0 of 1).

    Attributes:
        rank: global rank.
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def init(cls) -> DistContext:
        """Join torchrun's process group (read from its environment) and return this rank's
        context: the one call that starts a process group (the CLI makes it under torchrun).
        Outside torchrun (``WORLD_SIZE`` unset or 1) nothing is started: rank 0 of 1."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1 and not tdist.is_initialized():
            use_cuda = torch.cuda.is_available() and os.environ.get("TTAKIT_DIST_BACKEND", "") != "gloo"
            if use_cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            tdist.init_process_group(backend="nccl" if use_cuda else "gloo")
        return cls.current()

    @classmethod
    def current(cls) -> DistContext:
        """The context of the process group this process has joined (by :meth:`init`, or by
        the caller's own ``init_process_group``); rank 0 of 1 when it has joined none. Never
        starts a process group.

        Example:
            >>> DistContext.current()
            DistContext(rank=0, world_size=1, local_rank=0)
        """
        if not (tdist.is_available() and tdist.is_initialized()):
            return cls()
        return cls(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: torch.device | str) -> torch.device:
        """One GPU per local rank; CPU stays CPU."""
        dev = torch.device(requested)
        return torch.device("cuda", self.local_rank) if dev.type == "cuda" else dev

    def barrier(self) -> None:
        if self.world_size > 1:
            tdist.barrier()

    def shard(self, chunks: Sequence[T]) -> list[T]:
        """This rank's disjoint share: every ``world_size``-th chunk from ``rank``."""
        return list(chunks[self.rank :: self.world_size])

    def run_once(self, make: Callable[[], T]) -> T:
        """Rank 0 makes the object first (creating files), then the others."""
        if self.is_main:
            obj = make()
        self.barrier()
        if not self.is_main:
            obj = make()
        return obj

    def run_checked(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on every rank; if any rank fails, every rank raises an error naming the
        failing rank and holding its traceback (instead of the others waiting for it forever)."""
        error, cause = None, None
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - reported to every rank below, then raised from it
            if self.world_size == 1:
                raise
            error, cause = "".join(traceback.format_exception(e)).rstrip(), e
        if self.world_size == 1:
            return
        errors: list[Any] = [None] * self.world_size
        tdist.all_gather_object(errors, error)
        failed = [(r, msg) for r, msg in enumerate(errors) if msg is not None]
        if failed:
            r, msg = failed[0]
            # Every rank names the failing rank and prints its traceback (the others never saw it);
            # the failing rank also chains its own exception.
            raise TTAKitError(f"rank {r} of {self.world_size} failed:\n{msg}") from cause

    def gather_chunks(self, store: ChunkStore, mine: Sequence[tuple[int, int]]) -> None:
        """Send every rank's chunks to rank 0, which stores those it does not have yet."""
        if self.world_size == 1:
            return
        payload = [(start, *store.read(start)) for start, _ in mine]
        gathered: list[Any] = [None] * self.world_size if self.is_main else None  # type: ignore[assignment]
        tdist.gather_object(payload, gathered, dst=0)
        if self.is_main:
            for part in gathered:
                for start, tensors, skipped in part:
                    if not store.has(start):
                        store.write(start, tensors, skipped)
        self.barrier()
