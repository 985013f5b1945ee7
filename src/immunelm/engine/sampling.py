"""Deterministic, resumable, process-sharded batch order.

The order of examples depends only on (seed, epoch), never on wall-clock or worker timing, so
a resumed run sees exactly the batches an uninterrupted run would have seen. With several
processes, each global batch is split into per-process slices (DDP semantics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass
class BatchOrder:
    num_examples: int
    batch_size: int  # per process
    seed: int
    num_processes: int = 1
    process_index: int = 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.num_processes

    @property
    def batches_per_epoch(self) -> int:
        # Small datasets still give one (wrapped-around) batch per epoch.
        return max(1, self.num_examples // self.global_batch)

    def epoch_permutation(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        perm = torch.randperm(self.num_examples, generator=gen)
        if self.num_examples < self.global_batch:
            reps = -(-self.global_batch // self.num_examples)
            perm = perm.repeat(reps)
        return perm

    def batches(self, start_batch: int = 0) -> Iterator[list[int]]:
        """Endless stream of this process's index batches, skipping ``start_batch`` batches."""
        index = start_batch
        cached_epoch, perm = -1, torch.empty(0, dtype=torch.long)
        while True:
            epoch, within = divmod(index, self.batches_per_epoch)
            if epoch != cached_epoch:
                cached_epoch, perm = epoch, self.epoch_permutation(epoch)
            lo = within * self.global_batch + self.process_index * self.batch_size
            yield perm[lo : lo + self.batch_size].tolist()
            index += 1
