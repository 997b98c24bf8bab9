"""Training data as torch datasets: every source decoded and cached or streamed in shards, labels, and errors
naming the file or column."""

from __future__ import annotations

import logging
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from flow_pipelines.data_sources import load_digits_dataset
from flow_pipelines.images import ImageTransform
from flow_pipelines.training.data import DataConfig, collate_examples, prepare_training_data


def write_image_folder(root: Path, classes: dict[str, list[int]], size: tuple[int, int] = (6, 6)) -> Path:
    """Class sub-folders of uniform grey PNGs whose grey level identifies each image."""
    for name, levels in classes.items():
        folder = root / name
        folder.mkdir(parents=True)
        for level in levels:
            Image.new("L", size, color=level).save(folder / f"img_{level:03d}.png")
    return root


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


def test_local_folder_passed_as_a_dataset_name_goes_through_load_dataset(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path / "images", {"x": [5, 15], "y": [250]})
    data = prepare_training_data(DataConfig(dataset_name=str(root), resolution=4, num_channels=3))
    assert data.id2label == {0: "x", 1: "y"} and data.num_channels == 3
    batch = data.dataset.__getitems__([0, 1, 2])
    assert batch["pixels"].shape == (3, 3, 4, 4)
    assert sorted(int(p.float().mean()) for p in batch["pixels"]) == [5, 15, 250]


def test_the_channel_count_comes_from_the_whole_set_not_its_first_image(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for index in range(4):
            colour = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            Image.fromarray(colour).save(tmp_path / name / f"{index}.png")
    Image.new("L", (6, 6), color=90).save(tmp_path / "a" / "0.png")  # the first image is grey
    # A training run earlier in the session stops this logger propagating, so listen on it directly.
    train_logger = logging.getLogger("train_flow")
    train_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("WARNING", logger="train_flow"):
            data = prepare_training_data(DataConfig(train_data_dir=str(tmp_path), resolution=6))
    finally:
        train_logger.removeHandler(caplog.handler)
    assert data.num_channels == 3 and data.dataset.__getitems__([0])["pixels"].shape == (1, 3, 6, 6)
    assert "1 with 1, 7 with 3" in caplog.text and "training with 3 channels" in caplog.text


def test_an_unreadable_image_stops_the_run_at_the_start_even_without_a_cache(tmp_path: Path) -> None:
    folder = write_image_folder(tmp_path / "images", {"a": [10, 20, 30], "b": [40, 50, 60]})
    (folder / "b" / "img_050.png").write_bytes((folder / "b" / "img_040.png").read_bytes()[:30])
    config = DataConfig(train_data_dir=str(folder), resolution=6, cache_images="no")
    with pytest.raises(ValueError, match=r"1 training image\(s\) cannot be read.*img_050\.png"):
        prepare_training_data(config)
    # Asked not to check, the set loads, and the file is named when it is reached.
    data = prepare_training_data(DataConfig(**{**config.__dict__, "check_images": False}))
    with pytest.raises(ValueError, match=r"img_050\.png"):
        [data.dataset[index] for index in range(data.num_examples)]
