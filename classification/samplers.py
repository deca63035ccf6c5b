"""Repeated augmentation (Hoffer et al., 2020; Berman et al., 2019), DeiT's default sampler
(``--repeated-aug``, its ``RASampler``): every image comes ``num_repeats`` (3) times per epoch,
each copy augmented independently, the copies spread over the processes so that one batch step
sees an image under several augmentations.
"""
import math

import torch
from mmengine.dist import get_dist_info, sync_random_seed
from torch.utils.data import Sampler


class RepeatAugSampler(Sampler):
    """Indices of one process's share of an epoch.

    Per epoch (``set_epoch``; mmengine's ``DistSamplerSeedHook`` calls it): a permutation of the
    dataset drawn from ``seed + epoch`` (the same on every process), each index repeated
    ``num_repeats`` times in a row, padded from its start to a multiple of the process count;
    process r takes positions r, r + world, r + 2 world, ... -- the copies of one image land on
    consecutive processes. Each process then keeps its first ``len(self)`` indices, DeiT's epoch
    length: ``floor(len(dataset) // selected_round * selected_round / world)`` for
    ``selected_round=256`` (one pass over the images, rounded down to a multiple of 256,
    divided among the processes), so an epoch has as many steps as without repetition.
    ``selected_round=0`` keeps every repeated index (an epoch num_repeats times longer).

    ``shuffle=False`` keeps dataset order (then repeated). ``seed`` None draws one seed shared
    by all processes, as mmengine's DefaultSampler.
    """

    def __init__(self, dataset, shuffle: bool = True, num_repeats: int = 3,
                 selected_round: int = 256, seed: int | None = None,
                 rank: int | None = None, world_size: int | None = None):
        if num_repeats < 1:
            raise ValueError(f'num_repeats must be >= 1, got {num_repeats}')
        if selected_round < 0:
            raise ValueError(f'selected_round must be >= 0 (0: no rounding), got {selected_round}')
        dist_rank, dist_world = get_dist_info()
        self.rank = dist_rank if rank is None else rank
        self.world_size = dist_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f'rank {self.rank} outside the {self.world_size} processes')
        self.dataset, self.shuffle, self.num_repeats = dataset, shuffle, num_repeats
        self.seed = sync_random_seed() if seed is None else seed
        self.epoch = 0
        n = len(dataset)
        # Each process's share of the padded, repeated epoch (DeiT's num_samples).
        self.num_samples = math.ceil(n * num_repeats / self.world_size)
        self.total_size = self.num_samples * self.world_size
        if selected_round:
            self.num_selected = n // selected_round * selected_round // self.world_size
            if self.num_selected == 0:
                raise ValueError(
                    f'RepeatAugSampler: {n} images give an empty epoch with DeiT\'s length '
                    f'(images rounded down to a multiple of selected_round={selected_round}, '
                    f'divided by {self.world_size} process(es)). Set '
                    f'train_dataloader.sampler.selected_round=0 (every repeated image, an epoch '
                    f'{num_repeats}x longer) or use DefaultSampler for so small a dataset.')
        else:
            self.num_selected = self.num_samples

    def __iter__(self):
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        indices = order.repeat_interleave(self.num_repeats).tolist()
        indices += indices[:self.total_size - len(indices)]
        return iter(indices[self.rank:self.total_size:self.world_size][:self.num_selected])

    def __len__(self) -> int:
        return self.num_selected

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
