"""A distributed sampler whose position is part of the checkpoint and survives a change of world size.

torch's ``DistributedSampler`` keeps no position (it has no ``state_dict``), so a job resumed mid-epoch either
replays the epoch from its start or skips to the next one; and it deals sample ``i`` of the epoch's order to rank
``i % world_size``, so a position saved at one world size means nothing at another. (torchdata's
``StatefulDistributedSampler`` saves how many indices a rank yielded, which resumes only at the same world
size.) :class:`ElasticDistributedSampler` keeps one global position: how many samples of the epoch's order all
ranks together have consumed at the last step boundary. Resumed at any world size, the ranks share out the rest
of the epoch, so every sample of an epoch is used exactly once.

Each step, rank ``r`` takes a contiguous slice of the step's global batch (``batch_size`` per rank, the
DataLoader's ``batch_size``, which cuts each rank's indices into batches). Every rank takes part in every step,
so every rank's DataLoader yields the same number of batches: every step but the epoch's last gives each rank
``batch_size`` samples, and the last, short one is shared out evenly (1 to ``batch_size`` samples a rank). Only
when that last step would have fewer samples than there are ranks is it skipped: at most ``world_size - 1``
samples of the epoch, counted in :attr:`skipped` and logged. (A data set size that is a multiple of the world
size times the batch size, at every world size the job runs at, never skips.)

    sampler = ElasticDistributedSampler(dataset, batch_size=32, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=32, sampler=sampler)
    session.restore(model=model, optimizer=opt, state={"sampler": sampler})
    for batch in session.iterate(loader, epochs=10):    # calls set_epoch and advance for you
        ...
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


def step_sizes(remaining: int, world_size: int, batch_size: int) -> tuple[list[int], int]:
    """The global size of each step that consumes ``remaining`` samples, and how many samples are skipped.

    Every step gives each of the ``world_size`` ranks between 1 and ``batch_size`` samples (see the module
    docstring). Pure; the layout :class:`ElasticDistributedSampler` uses.
    """
    if world_size < 1 or batch_size < 1 or remaining < 0:
        raise ValueError(f"bad layout: remaining={remaining} world_size={world_size} batch_size={batch_size}")
    full_batch = world_size * batch_size
    full, tail = divmod(remaining, full_batch)
    sizes = [full_batch] * full
    if tail >= world_size:
        sizes.append(tail)
        tail = 0
    return sizes, tail


def rank_slice(step_size: int, world_size: int, rank: int) -> tuple[int, int]:
    """Offset and length of ``rank``'s contiguous share of a step of ``step_size`` samples (shares differ by one
    at most)."""
    base, extra = divmod(step_size, world_size)
    return rank * base + min(rank, extra), base + (1 if rank < extra else 0)


class ElasticDistributedSampler(Sampler[int]):
    """A ``DistributedSampler`` with a checkpointable position that resumes mid-epoch at another world size.

    Args:
        dataset: the data set (its ``len``) or its length.
        batch_size: samples per rank and step: the ``batch_size`` of the DataLoader this sampler feeds.
        num_replicas, rank: the world size and this rank (default: from the default process group).
        shuffle: a new order every epoch (seeded by ``seed + epoch``, the same on every rank), else in order.
        seed: the shuffle seed; must be the same on every rank.
    """

    def __init__(
        self,
        dataset: Sized | int,
        *,
        batch_size: int,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        if num_replicas is None or rank is None:
            import torch.distributed as dist

            initialized = dist.is_available() and dist.is_initialized()
            num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if initialized else 1)
            rank = rank if rank is not None else (dist.get_rank() if initialized else 0)
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in a world of {num_replicas}")
        self.dataset_len = dataset if isinstance(dataset, int) else len(dataset)
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        #: Samples of this epoch's order consumed by all ranks together, at the last step boundary.
        self.consumed = 0

    # ------------------------------------------------------------------------------------------- layout
    def order(self) -> list[int]:
        """This epoch's sample order (the same on every rank)."""
        if not self.shuffle:
            return list(range(self.dataset_len))
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return [int(i) for i in torch.randperm(self.dataset_len, generator=g)]

    def _layout(self) -> tuple[list[int], int]:
        return step_sizes(self.dataset_len - self.consumed, self.num_replicas, self.batch_size)

    @property
    def steps_left(self) -> int:
        """Steps still to run in this epoch."""
        return len(self._layout()[0])

    @property
    def skipped(self) -> int:
        """Samples at the end of this epoch that no step will use (see the module docstring)."""
        return self._layout()[1]

    def __iter__(self) -> Iterator[int]:
        sizes, skipped = self._layout()
        if skipped:
            log.warning(
                "epoch %d: the last %d sample(s) cannot be shared among %d ranks and are skipped",
                self.epoch,
                skipped,
                self.num_replicas,
            )
        order = self.order()
        start = self.consumed
        for size in sizes:
            offset, length = rank_slice(size, self.num_replicas, self.rank)
            yield from order[start + offset : start + offset + length]
            start += size

    def __len__(self) -> int:
        sizes, _ = self._layout()
        return sum(rank_slice(size, self.num_replicas, self.rank)[1] for size in sizes)

    # ------------------------------------------------------------------------------------------ position
    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` (from its beginning, unless it is the epoch the position is in already)."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.consumed = 0

    def advance(self, steps: int = 1) -> None:
        """Record that every rank has finished ``steps`` more steps of this epoch (call it at a step boundary)."""
        sizes, skipped = self._layout()
        if steps > len(sizes):
            raise ValueError(f"advance({steps}) past the end of epoch {self.epoch} ({len(sizes)} step(s) left)")
        self.consumed += sum(sizes[:steps])
        if steps == len(sizes):
            self.consumed += skipped

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "consumed": self.consumed,
            "dataset_len": self.dataset_len,
            "shuffle": self.shuffle,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("dataset_len", "shuffle", "seed"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"the checkpointed sampler had {key}={state[key]!r}, this one has {getattr(self, key)!r}: "
                    "its position would not mean the same samples"
                )
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])
