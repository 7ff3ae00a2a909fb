"""Environment defaults are read only at a CLI edge, into explicit context managers."""

import pytest

from kernels import current_backend
from neuralnum.core.runtime import cli_defaults, env_progress, progress, show_progress


def test_cli_defaults_apply_the_environment_inside_the_block_only():
    with show_progress(True):
        assert not progress(range(2)).disable
        with cli_defaults({"NEURALNUM_PROGRESS": "0", "NEURALNUM_KERNELS": "reference"}):
            assert progress(range(2)).disable and current_backend() == "reference"
        assert not progress(range(2)).disable and current_backend() == "auto"
        with cli_defaults({}):
            assert not progress(range(2)).disable and current_backend() == "auto"
        assert progress(range(2), enabled=False).disable  # e.g. a non-zero rank


def test_environment_values_are_validated():
    assert env_progress({}) and env_progress({"NEURALNUM_PROGRESS": "1"})
    assert not env_progress({"NEURALNUM_PROGRESS": "0"})
    with pytest.raises(ValueError, match="backend"), cli_defaults({"NEURALNUM_KERNELS": "gpu"}):
        pass
