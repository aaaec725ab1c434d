"""A member's training batches: cached images augmented in data-loader worker processes.

Augmentation (re-degrading, cropping, flipping a few hundred pixels per image) costs about as much as a small
model's step on the CPU, so worker processes prepare the next batches while the member computes. Every sample
carries its own augmentation seed, so the pixels (and the trained weights) are the same with any number of
workers, on any machine.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from enclip_qdrant.system import available_cores
from enclip_qdrant.training.augment import TrainTransform
from enclip_qdrant.training.image_cache import ImageCache

MAX_LOADER_WORKERS = 4  # beyond this a CPU member computes slower than its batches are made


class AugmentedImages(Dataset):
    """Item (product index, seed): that product's cached image, augmented with that seed."""

    def __init__(self, images: ImageCache, transform: TrainTransform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        i, seed = key
        return self.transform(self.images[i], seed)


class EpochBatches:
    """The batch sampler: the epoch's order, cut into batches, each index paired with its sample's seed."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.order = np.zeros(0, dtype=np.int64)
        self.seeds = np.zeros(0, dtype=np.int64)

    def set_epoch(self, order: np.ndarray, seeds: np.ndarray) -> None:
        self.order, self.seeds = np.asarray(order), np.asarray(seeds)

    def __len__(self) -> int:
        return len(self.order) // self.batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        bs = self.batch_size
        for b in range(len(self)):
            yield [(int(i), int(s)) for i, s in zip(self.order[b * bs:(b + 1) * bs], self.seeds[b * bs:(b + 1) * bs],
                                                    strict=True)]


def loader_workers(threads: int, cuda: bool = False) -> int:
    """Worker processes for one member: on a GPU every spare core; on the CPU half the member's cores (the
    other half computes), none for a member on one core. Members trained side by side (parallel.py) already
    split the cores between them and load in their own main thread (loader_workers=0)."""
    if cuda:
        return max(1, min(2 * MAX_LOADER_WORKERS, available_cores() - 1))
    return min(MAX_LOADER_WORKERS, threads // 2)


def member_loader(images: ImageCache, transform: TrainTransform, batch_size: int, workers: int | None,
                  threads: int, pin_memory: bool = False, cuda: bool = False) -> tuple[DataLoader, EpochBatches]:
    """The loader (workers kept for the whole member) and its sampler, which `set_epoch` fills each epoch."""
    n = loader_workers(threads, cuda) if workers is None else workers
    if multiprocessing.current_process().daemon:  # a daemon process may not start children: load in this thread
        n = 0
    batches = EpochBatches(batch_size)
    # fork where there is one: a spawned worker would re-run an unguarded caller's script
    context = multiprocessing.get_context("fork") if n and sys.platform.startswith("linux") else None
    loader = DataLoader(AugmentedImages(images, transform), batch_sampler=batches, num_workers=n,
                        persistent_workers=n > 0, pin_memory=pin_memory, multiprocessing_context=context,
                        prefetch_factor=2 if n else None)
    return loader, batches
