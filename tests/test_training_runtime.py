"""Runtime pieces of a training run: CPU threads per process, secrets kept out of the command line, signals
turned into a stop request."""

from __future__ import annotations

import os
import signal

import pytest

from flow_pipelines.training.runtime import StopRequest, choose_cpu_threads, chose_omp_threads, redact_argv


def test_cpu_thread_choice() -> None:
    assert choose_cpu_threads(3, num_processes=2) == 3
    automatic = choose_cpu_threads(None, num_processes=1)
    assert 1 <= automatic <= (os.cpu_count() or 1)
    assert choose_cpu_threads(None, num_processes=64) == 1
    with pytest.raises(ValueError, match="cpu_threads"):
        choose_cpu_threads(0, num_processes=1)


def test_accelerates_default_of_one_openmp_thread_does_not_pin_the_run_to_one_core() -> None:
    launched = {
        "ACCELERATE_DYNAMO_BACKEND": "NO"
    }  # in the environment of every process accelerate launch starts
    assert not chose_omp_threads({**launched, "OMP_NUM_THREADS": "1"})  # its default on a machine without GPU
    assert chose_omp_threads({**launched, "OMP_NUM_THREADS": "3"})  # a value the user set, passed on
    assert chose_omp_threads({"OMP_NUM_THREADS": "1"})  # set by the user for a plain `python` run
    assert not chose_omp_threads({})


def test_secret_flag_values_are_redacted_in_place() -> None:
    argv = ["train_flow.py", "--hub_token", "hf_x", "--seed", "1", "--hub_token=hf_y", "--hub_token"]
    redact_argv(argv)
    assert argv == ["train_flow.py", "--hub_token", "***", "--seed", "1", "--hub_token=***", "--hub_token"]


def test_a_signal_becomes_a_stop_request_and_the_handlers_come_back() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"
        # After the first signal the next one is not caught any more.
        assert signal.getsignal(signal.SIGTERM) is previous
    assert signal.getsignal(signal.SIGTERM) is previous
