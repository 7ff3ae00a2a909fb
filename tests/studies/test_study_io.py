"""``studies.study_io.run_cli``: a study run from the command line honours the documented
environment defaults, like the package's own entry points."""

from pathlib import Path

import pytest

import studies
from neuralnum.core.runtime import progress, show_progress
from studies.study_io import run_cli


@pytest.mark.parametrize(("value", "shown"), [("0", False), ("1", True)])
def test_run_cli_applies_neuralnum_progress(monkeypatch, value, shown):
    monkeypatch.setenv("NEURALNUM_PROGRESS", value)
    seen = []
    with show_progress(not shown), pytest.raises(SystemExit) as ended:  # the env flips it
        run_cli(lambda argv: seen.append(progress(range(1)).disable))
    assert seen == [not shown] and ended.value.code == 0


def test_every_study_module_enters_through_run_cli():
    """Each ``python -m studies.<name>`` ends in ``run_cli(main)`` (not a bare ``main()``)."""
    entry = 'if __name__ == "__main__":'
    scripts = [p for p in Path(studies.__file__).parent.glob("*.py")
               if entry in p.read_text()]
    assert len(scripts) >= 10
    for path in scripts:
        assert path.read_text().split(entry)[1].strip() == "run_cli(main)", path
