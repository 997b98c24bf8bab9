"""Where images come from: scikit-learn's digits as a ``datasets.Dataset``, and finding the image and label
columns of a dataset, and what an image folder must hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flow_pipelines.data_sources import (
    check_class_folders,
    load_digits_dataset,
    load_image_dataset,
    resolve_columns,
)


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


def test_column_detection_and_missing_columns() -> None:
    assert resolve_columns(["img", "fine_label", "coarse_label"]) == ("img", "fine_label")
    assert resolve_columns(["image", "labels"]) == ("image", "labels")
    with pytest.raises(ValueError, match=r"columns are: 'image', 'caption'"):
        resolve_columns(["image", "caption"])
    with pytest.raises(ValueError, match="no label column 'cls'.*'image', 'label'"):
        resolve_columns(["image", "label"], label_column="cls")


def test_an_image_folder_without_two_class_folders_says_so(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for index in range(3):
        Image.new("L", (4, 4)).save(flat / f"{index}.png")
    with pytest.raises(ValueError, match="has no class sub-folders and 3 image file"):
        check_class_folders(flat)
    (tmp_path / "one" / "cats").mkdir(parents=True)
    Image.new("L", (4, 4)).save(tmp_path / "one" / "cats" / "0.png")
    with pytest.raises(ValueError, match="has one class sub-folder \\('cats'\\).*at least two"):
        load_image_dataset(train_data_dir=str(tmp_path / "one"))
    (tmp_path / "split" / "train" / "cats").mkdir(parents=True)
    (tmp_path / "split" / "train" / "dogs").mkdir(parents=True)
    for name in ("cats", "dogs"):
        Image.new("L", (4, 4)).save(tmp_path / "split" / "train" / name / "0.png")
    assert check_class_folders(tmp_path / "split") == ["cats", "dogs"]
    with pytest.raises(ValueError, match="is not a folder"):
        check_class_folders(tmp_path / "missing")
