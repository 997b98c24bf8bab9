"""Training data: sources, column detection, transforms, caching, streaming shards, errors naming files."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from flow_pipelines.data_sources import load_digits_dataset, resolve_columns
from flow_pipelines.images import ImageTransform, convert_channels, dequantize, pixels_to_model_range
from flow_pipelines.training.batches import EpochShuffleSampler, random_flip
from flow_pipelines.training.data import DataConfig, collate_examples, prepare_training_data


def write_image_folder(root: Path, classes: dict[str, list[int]], size: tuple[int, int] = (6, 6)) -> Path:
    """Class sub-folders of uniform grey PNGs whose grey level identifies each image."""
    for name, levels in classes.items():
        folder = root / name
        folder.mkdir(parents=True)
        for level in levels:
            Image.new("L", size, color=level).save(folder / f"img_{level:03d}.png")
    return root


def test_digits_dataset_matches_scikit_learn() -> None:
    from sklearn.datasets import load_digits

    dataset = load_digits_dataset()
    reference = load_digits()
    assert len(dataset) == 1797
    assert dataset.features["label"].names == [str(d) for d in range(10)]
    for index in (0, 500, 1796):
        image = dataset[index]["image"]
        assert image.size == (8, 8) and image.mode == "L"
        expected = np.rint(reference.images[index] * 255 / 16).astype(np.uint8)
        assert np.array_equal(np.asarray(image), expected)
        assert dataset[index]["label"] == reference.target[index]


def test_digits_training_data_is_cached_and_upsampled() -> None:
    data = prepare_training_data(DataConfig(resolution=16))
    assert data.cached and data.num_examples == 1797 and data.num_channels == 1
    assert data.id2label == {d: str(d) for d in range(10)}
    batch = data.dataset.__getitems__([0, 1, 2])
    assert batch["pixels"].dtype == torch.uint8 and batch["pixels"].shape == (3, 1, 16, 16)
    # The cache holds exactly what the per-item transform produces.
    transform = ImageTransform(16, 1, center_crop=False, interpolation="bilinear")
    expected = transform(load_digits_dataset()[2]["image"])
    assert torch.equal(batch["pixels"][2], expected)


def test_column_detection_and_missing_columns() -> None:
    assert resolve_columns(["img", "fine_label", "coarse_label"]) == ("img", "fine_label")
    assert resolve_columns(["image", "labels"]) == ("image", "labels")
    with pytest.raises(ValueError, match=r"columns are: 'image', 'caption'"):
        resolve_columns(["image", "caption"])
    with pytest.raises(ValueError, match="no label column 'cls'.*'image', 'label'"):
        resolve_columns(["image", "label"], label_column="cls")


def test_saved_dataset_with_rgb_images_and_string_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)) for _ in range(6)]
    names = ["cat", "dog", "cat", "bird", "dog", "cat"]
    dataset = datasets.Dataset.from_dict(
        {"img": images, "species": names},
        features=datasets.Features({"img": datasets.Image(), "species": datasets.Value("string")}),
    )
    dataset.save_to_disk(str(tmp_path / "saved"))
    data = prepare_training_data(
        DataConfig(
            dataset_name=str(tmp_path / "saved"), label_column="species", resolution=8, center_crop=True
        )
    )
    assert data.num_channels == 3 and data.id2label == {0: "bird", 1: "cat", 2: "dog"}
    batch = data.dataset.__getitems__(list(range(6)))
    assert batch["pixels"].shape == (6, 3, 8, 8)
    assert batch["class_labels"].tolist() == [1, 2, 1, 0, 2, 1]


def test_dataset_without_label_column_is_reported_with_its_columns(tmp_path: Path) -> None:
    dataset = datasets.Dataset.from_dict(
        {"image": [Image.new("L", (4, 4))] * 2, "text": ["a", "b"]},
        features=datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")}),
    )
    dataset.save_to_disk(str(tmp_path / "nolabel"))
    with pytest.raises(ValueError, match="columns are: 'image', 'text'"):
        prepare_training_data(DataConfig(dataset_name=str(tmp_path / "nolabel"), resolution=4))


def test_image_folder_gives_class_names_and_pixels(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", {"circle": [10, 20, 30], "square": [200, 210]})
    data = prepare_training_data(DataConfig(train_data_dir=str(root), resolution=4))
    assert data.id2label == {0: "circle", 1: "square"} and data.cached
    batch = data.dataset.__getitems__(list(range(5)))
    by_level = {
        int(p.float().mean()): int(c) for p, c in zip(batch["pixels"], batch["class_labels"], strict=True)
    }
    assert by_level == {10: 0, 20: 0, 30: 0, 200: 1, 210: 1}


def test_corrupt_image_file_is_named(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", {"a": [1, 2], "b": [3]})
    broken = root / "b" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match=r"broken\.png"):
        prepare_training_data(DataConfig(train_data_dir=str(root), resolution=4))


def test_transform_resizes_the_shorter_side_and_crops_the_centre() -> None:
    # 20x10: left half black, right half white; no resize needed, the centre crop takes columns 5..14.
    array = np.zeros((10, 20), dtype=np.uint8)
    array[:, 10:] = 255
    out = ImageTransform(10, 1, center_crop=True)(Image.fromarray(array))
    assert out.shape == (1, 10, 10)
    assert torch.all(out[0, :, :5] == 0) and torch.all(out[0, :, 5:] == 255)
    # A random crop stays inside the image and keeps its size.
    torch.manual_seed(0)
    crops = {
        tuple(ImageTransform(10, 1, center_crop=False)(Image.fromarray(array))[0, 0].tolist())
        for _ in range(20)
    }
    assert len(crops) > 1


def test_channel_conversion() -> None:
    transparent = Image.new("RGBA", (2, 2), (255, 0, 0, 0))
    assert convert_channels(transparent, 3).getpixel((0, 0)) == (255, 255, 255)  # onto white
    assert convert_channels(Image.new("RGB", (2, 2), (30, 60, 90)), 1).mode == "L"
    assert convert_channels(Image.new("L", (2, 2), 7), 3).getpixel((1, 1)) == (7, 7, 7)
    sixteen_bit = Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))
    assert convert_channels(sixteen_bit, 1).getpixel((0, 0)) == 255
    with pytest.raises(ValueError, match="allowed: 1, 3, 4"):
        convert_channels(transparent, 2)


def test_pixel_range_dequantization_and_flip() -> None:
    pixels = torch.tensor([0, 128, 255], dtype=torch.uint8)
    torch.testing.assert_close(pixels_to_model_range(pixels), torch.tensor([-1.0, 128 / 127.5 - 1, 1.0]))
    images = pixels_to_model_range(torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8))
    noisy = dequantize(images, torch.Generator().manual_seed(0))
    difference = noisy - images
    assert difference.abs().max() <= 1 / 255 + 1e-6 and difference.abs().max() > 0.9 / 255
    # Centred: the mean of 4096 uniform draws on [-1/255, 1/255] is within ~5 standard errors of 0.
    assert abs(float(difference.mean())) < 5 * (1 / 255) / np.sqrt(3 * difference.numel())
    flipped = random_flip(images, torch.Generator().manual_seed(0))
    mirrored = torch.tensor(
        [torch.equal(f, i.flip(-1)) and not torch.equal(f, i) for f, i in zip(flipped, images, strict=True)]
    )
    assert 10 < int(mirrored.sum()) < 54


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


def test_streamed_image_folder_is_split_between_processes(tmp_path: Path) -> None:
    root = write_image_folder(
        tmp_path / "images", {"a": list(range(0, 40, 5)), "b": list(range(100, 140, 5))}
    )
    seen = []
    for rank in range(2):
        data = prepare_training_data(
            DataConfig(train_data_dir=str(root), resolution=4, streaming=True, shuffle_buffer_size=4),
            process_index=rank,
            num_processes=2,
        )
        assert data.num_examples is None and data.id2label == {0: "a", 1: "b"}
        loader = torch.utils.data.DataLoader(data.dataset, batch_size=3, collate_fn=collate_examples)
        levels = [int(p.float().mean()) for batch in loader for p in batch["pixels"]]
        seen.append(levels)
    assert set(seen[0]).isdisjoint(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(0, 40, 5)) + list(range(100, 140, 5))


def test_bad_data_settings_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a folder"):
        prepare_training_data(DataConfig(train_data_dir=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="cache_images"):
        prepare_training_data(DataConfig(cache_images="sometimes"))
    with pytest.raises(ValueError, match="interpolation"):
        ImageTransform(8, 1, interpolation="cubic")


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


def test_local_folder_passed_as_a_dataset_name_goes_through_load_dataset(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", {"x": [5, 15], "y": [250]})
    data = prepare_training_data(DataConfig(dataset_name=str(root), resolution=4, num_channels=3))
    assert data.id2label == {0: "x", 1: "y"} and data.num_channels == 3
    batch = data.dataset.__getitems__([0, 1, 2])
    assert batch["pixels"].shape == (3, 3, 4, 4)
    assert sorted(int(p.float().mean()) for p in batch["pixels"]) == [5, 15, 250]
