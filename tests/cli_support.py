"""What the tests of the command-line tools share: running one as a real process, the commands of a docstring's
examples, a truncated file, and the check that a failure ends in one readable line."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_command(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python ARGUMENTS`` (``-m flow_pipelines.sample ...`` or a script) with this checkout importable.

    Args:
        arguments: The interpreter's arguments.
        cwd: The working folder.

    Returns:
        The finished process, with text stdout and stderr.
    """
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, *arguments], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300
    )


def assert_one_line_error(stderr: str, *fragments: str) -> str:
    """Check that a command's stderr is one ``error: ...`` line, without a traceback, naming ``fragments``.

    Args:
        stderr: Everything the command wrote to stderr.
        *fragments: Text the line must contain.

    Returns:
        The line.
    """
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def truncate(path: Path) -> None:
    """Cut a file to half its size, as an interrupted copy or download leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def example_commands(docstring: str, program: str) -> list[list[str]]:
    """The example command lines of a docstring that run ``program``, as argument lists after it.

    Args:
        docstring: A module docstring with examples (``\\`` continues a line).
        program: How the examples invoke the command, e.g. ``"python -m flow_pipelines.sample"``.

    Returns:
        One argument list per example, without ``program``.
    """
    commands, pending = [], ""
    for line in docstring.splitlines():
        line = line.strip()
        if pending or line.startswith(program):
            pending += " " + line.rstrip("\\")
            if not line.endswith("\\"):
                commands.append(shlex.split(pending)[len(shlex.split(program)) :])
                pending = ""
    return commands
