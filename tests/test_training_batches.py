"""Batches of a training run: the epoch order as a function of seed and epoch, skipping to a resumed position in
step with accelerate's process shards, and random flips."""

from __future__ import annotations

import torch

from flow_pipelines.images import pixels_to_model_range
from flow_pipelines.training.batches import EpochShuffleSampler, random_flip


def test_epoch_sampler_is_a_function_of_seed_and_epoch_and_can_skip() -> None:
    sampler = EpochShuffleSampler(10, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(10)) and list(sampler) == first
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(second) == list(range(10))
    sampler.set_epoch(1, skip_examples=4)
    sampler.set_epoch(1)  # accelerate repeats set_epoch when iteration starts: the skip survives it
    assert list(sampler) == second[4:]
    assert list(sampler) == second  # a skip applies to one pass only


def test_skipping_global_batches_keeps_accelerates_process_shards_aligned() -> None:
    from accelerate.data_loader import BatchSamplerShard

    def shards(skip_batches: int) -> list[list[list[int]]]:
        per_process = []
        for rank in range(2):
            sampler = EpochShuffleSampler(40, seed=1)
            sampler.set_epoch(2, skip_examples=skip_batches * 4 * 2)
            batches = torch.utils.data.BatchSampler(sampler, batch_size=4, drop_last=True)
            per_process.append(list(BatchSamplerShard(batches, num_processes=2, process_index=rank)))
        return per_process

    full, resumed = shards(0), shards(3)
    assert all(len(batches) == 5 for batches in full)
    # After skipping 3 global batches, each process continues with exactly its remaining batches.
    assert resumed == [full[0][3:], full[1][3:]]
    # Within a step the two processes take different examples.
    assert all(set(a).isdisjoint(b) for a, b in zip(full[0], full[1], strict=True))


def test_random_flip_mirrors_about_half_the_images() -> None:
    images = pixels_to_model_range(torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8))
    flipped = random_flip(images, torch.Generator().manual_seed(0))
    mirrored = torch.tensor(
        [torch.equal(f, i.flip(-1)) and not torch.equal(f, i) for f, i in zip(flipped, images, strict=True)]
    )
    assert 10 < int(mirrored.sum()) < 54
