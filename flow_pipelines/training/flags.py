"""Reading a piece's settings from the parsed flags: a flag and a setting of the same name are the same thing."""

from __future__ import annotations

import argparse
import dataclasses
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
