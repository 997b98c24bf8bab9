"""Class names and ids: the ``id2label`` table a pipeline keeps, and resolving what a user asks for into ids.

A user may ask for classes by id or by name (``pipe(class_labels=["tench", 7])``), in any of the shapes
diffusers' pipelines and tests build: a single value, a list, a nested list (``[[1], [1]]``), a 0-d or 1-d
integer tensor or numpy array. Names are matched exactly, case-insensitively, or as one of the comma-separated
synonyms of an ImageNet-style name (``"tench, Tinca tinca"`` answers to ``"tench"``); a string is always one name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

ClassLabels = int | str | Sequence[Any] | torch.Tensor | np.ndarray
"""What a pipeline accepts as class labels."""


def normalize_id2label(
    id2label: dict[int | str, str] | None, num_classes: int | None = None
) -> dict[int, str]:
    """Bring a class-name table to ``{int id: name}`` form; JSON stores the ids as strings.

    Args:
        id2label: Class names keyed by id (ints or digit strings), or ``None``.
        num_classes: When given, every id must lie in ``[0, num_classes)``.

    Returns:
        The table with integer keys, sorted by id (empty for ``None``).

    Raises:
        ValueError: If a key is not an integer, an id is out of range, or a name is not a non-empty string.
    """
    if id2label is None:
        return {}
    if not isinstance(id2label, dict):
        raise ValueError(f"id2label must be a dict of class id -> name, got {type(id2label).__name__}.")
    table: dict[int, str] = {}
    for key, name in id2label.items():
        try:
            class_id = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"id2label key {key!r} is not an integer class id.") from None
        if isinstance(key, float) and key != class_id:
            raise ValueError(f"id2label key {key!r} is not an integer class id.")
        if num_classes is not None and not 0 <= class_id < num_classes:
            raise ValueError(f"id2label has class id {class_id}; allowed ids are 0..{num_classes - 1}.")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"id2label[{class_id}] = {name!r} must be a non-empty string.")
        table[class_id] = name
    return dict(sorted(table.items()))


def _flatten(class_labels: ClassLabels) -> list[Any]:
    """The individual labels of any accepted shape, in order."""
    if isinstance(class_labels, (torch.Tensor, np.ndarray)):
        array = (
            class_labels.detach().cpu().numpy() if isinstance(class_labels, torch.Tensor) else class_labels
        )
        if array.dtype.kind not in "iu" or array.ndim > 1:
            raise ValueError(
                f"class_labels array must be a 0-d or 1-d integer tensor or array, got {array.dtype} of shape "
                f"{tuple(array.shape)}."
            )
        return array.reshape(-1).tolist()
    if isinstance(class_labels, (str, int, np.integer)):
        return [class_labels]
    if isinstance(class_labels, Sequence):
        items: list[Any] = []
        for item in class_labels:
            # diffusers' batch tests wrap each per-sample value in a list: [[1], [1]].
            nested = isinstance(item, (Sequence, torch.Tensor, np.ndarray)) and not isinstance(item, str)
            items.extend(_flatten(item) if nested else [item])
        return items
    raise ValueError(f"class_labels={class_labels!r} must be a class id, a class name, or a list of them.")


def _name_lookup(id2label: dict[int, str]) -> dict[str, int]:
    """Case-folded names and comma-separated synonyms -> id; full names take precedence."""
    lookup: dict[str, int] = {}
    for class_id, name in id2label.items():
        for synonym in name.split(","):
            if synonym.strip():
                lookup.setdefault(synonym.strip().casefold(), class_id)
    for class_id, name in id2label.items():
        lookup[name.strip().casefold()] = class_id
    return lookup


def _unknown_name_message(name: str, id2label: dict[int, str], num_classes: int) -> str:
    if not id2label:
        return (
            f"class name {name!r} cannot be resolved: this pipeline has no id2label; pass integer class ids in "
            f"0..{num_classes - 1}."
        )
    known = ", ".join(repr(n) for n in list(id2label.values())[:8])
    more = f", ... ({len(id2label)} names in all)" if len(id2label) > 8 else ""
    return f"unknown class name {name!r}; known names: {known}{more}."


def resolve_class_labels(class_labels: ClassLabels, id2label: dict[int, str], num_classes: int) -> list[int]:
    """Resolve class labels (ids and/or names, in any accepted shape) to integer class ids.

    Args:
        class_labels: An id, a name, or a (nested) sequence, 0-d / 1-d integer tensor or array of them.
        id2label: Class names by id (may be empty).
        num_classes: The number of real classes; ids lie in ``[0, num_classes)``.

    Returns:
        One class id per label.

    Raises:
        ValueError: For an empty list, a name that is not in ``id2label``, an id outside ``[0, num_classes)``, or
            a value that is neither an id nor a name.
    """
    items = _flatten(class_labels)
    if not items:
        raise ValueError("class_labels is empty; pass at least one class id or name.")
    lookup: dict[str, int] | None = None
    ids: list[int] = []
    for item in items:
        if isinstance(item, str):
            lookup = lookup if lookup is not None else _name_lookup(id2label)
            key = item.strip().casefold()
            if key not in lookup:
                raise ValueError(_unknown_name_message(item, id2label, num_classes))
            ids.append(lookup[key])
        elif isinstance(item, (int, np.integer)) and not isinstance(item, (bool, np.bool_)):
            if not 0 <= int(item) < num_classes:
                raise ValueError(
                    f"class label {int(item)} is out of range; allowed class ids are 0..{num_classes - 1}."
                )
            ids.append(int(item))
        else:
            raise ValueError(f"class label {item!r} must be an integer class id or a class name (str).")
    return ids
