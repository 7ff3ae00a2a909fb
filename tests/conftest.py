"""Shared test configuration: Hypothesis profiles sized for a 2-core CPU.

The default ``ci`` profile is derandomized, so a run's verdict depends on the code alone;
``HYPOTHESIS_PROFILE=dev`` explores fresh random examples (more of them) while developing.
"""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from neuralnum.core.runtime import show_progress

settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def single_thread():
    """Run a test of tiny tensor ops on one intra-op thread (restored afterwards): on a
    shared, loaded 2-core machine, OpenMP barriers across 2 threads can make small
    matmuls 100× slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_progress_bars():
    """No progress bars in test logs (what a CLI does under ``NEURALNUM_PROGRESS=0``)."""
    with show_progress(False):
        yield
