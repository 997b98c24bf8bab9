"""Runtime settings of a training run: how many CPU threads each process uses."""

from __future__ import annotations

import pytest
import torch

from flow_pipelines.training.runtime import choose_cpu_threads


def test_cpu_thread_choice() -> None:
    assert choose_cpu_threads(3, num_processes=2) == 3
    automatic = choose_cpu_threads(None, num_processes=1)
    assert 1 <= automatic <= torch.get_num_threads()
    assert choose_cpu_threads(None, num_processes=64) == 1
    with pytest.raises(ValueError, match="cpu_threads"):
        choose_cpu_threads(0, num_processes=1)
