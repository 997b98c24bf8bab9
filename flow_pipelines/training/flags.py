"""Reading the parsed flags: a piece's settings from the flags of their names, and the ranges of numeric flags."""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any, TypeVar

Settings = TypeVar("Settings")


def settings_from_args(
    settings_class: type[Settings], args: argparse.Namespace, **overrides: Any
) -> Settings:
    """Build a dataclass of settings from the flags named like its fields, then the given overrides.

    Fields without a flag of their name keep their defaults unless overridden.

    Args:
        settings_class: The dataclass (e.g. ``DataConfig``, ``FlowMatchingObjective``).
        args: The parsed flags.
        **overrides: Values for fields whose flag is named differently or derived.

    Returns:
        The settings.
    """
    names = {field.name for field in dataclasses.fields(settings_class)}
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    return settings_class(**{**values, **overrides})


def check_numbers(
    args: argparse.Namespace, positive: tuple[str, ...] = (), non_negative: tuple[str, ...] = ()
) -> None:
    """Check numeric flags: every float flag finite, the named ones > 0 or >= 0 (a flag left at None passes).

    Args:
        args: The parsed flags.
        positive: Flags that must be > 0.
        non_negative: Flags that must be >= 0 (0 usually disables something).

    Raises:
        ValueError: Naming the first flag out of range and what is allowed.
    """
    for name, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{name}={value} must be a finite number.")
    for names, low, allowed in (
        (positive, 0, "a positive number"),
        (non_negative, None, ">= 0 (0 disables)"),
    ):
        for name in names:
            value = getattr(args, name)
            if value is not None and (value <= 0 if low == 0 else value < 0):
                raise ValueError(f"--{name}={value} must be {allowed}.")
