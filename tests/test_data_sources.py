"""Where images come from: scikit-learn's digits as a ``datasets.Dataset``, and finding the image and label
columns of a dataset."""

from __future__ import annotations

import numpy as np
import pytest

from flow_pipelines.data_sources import load_digits_dataset, resolve_columns


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
