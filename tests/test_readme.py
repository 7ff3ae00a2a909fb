"""README.md's code runs as written.

* Every ```python block is executed in a fresh namespace, with warnings as errors, in a
  directory where ``runs/demo/learner.pt`` (what ``python3 -m neuralnum demo`` writes)
  is a learner as accurate as the demo's: the exact GD construction of linear attention
  (quicker to make than training one), saved and loaded like any other.
* Every ``python3 -m …`` command of ours (in a ```bash block or inline) parses: it runs
  in-process with ``--help`` appended and must print its usage and exit 0. The install
  command is left to CI (``.ci/run``), which also runs the README's test command: the two
  must agree.
* Set-up has exactly two commands.
"""

from __future__ import annotations

import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest
import torch

from neuralnum import Learner

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```$", README, re.DOTALL | re.MULTILINE)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
#: The packages whose commands are parsed here (pip is CI's, pytest is checked below).
OURS = ("neuralnum", "structured", "studies")


def _commands() -> list[list[str]]:
    """Every ``python3 -m <ours> …`` of the README: whole lines of bash blocks (split at
    ``&&``) and inline code spans."""
    found = [part for lang, code in BLOCKS if lang == "bash" for line in code.splitlines()
             for part in line.split("&&")]
    found += re.findall(r"`(python3 -m [^`]+)`", re.sub(r"^```.*?^```$", "", README,
                                                        flags=re.DOTALL | re.MULTILINE))
    commands = [shlex.split(text) for text in found if text.strip()]
    return [c for c in commands if c[:2] == ["python3", "-m"] and c[2].split(".")[0] in OURS]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding ``runs/demo/learner.pt``: linear attention's exact GD step."""
    root = tmp_path_factory.mktemp("readme")
    Learner("linear_attention", n=20, d=5).init_construction().save(
        root / "runs" / "demo" / "learner.pt")
    return root


def test_readme_has_python_blocks_and_commands():
    assert len(PYTHON) >= 3
    assert len(_commands()) >= 3


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("code", PYTHON, ids=[f"python-{i}" for i in range(len(PYTHON))])
def test_python_block_runs(code: str, demo_dir: Path, monkeypatch, capsys):
    monkeypatch.chdir(demo_dir)
    torch.manual_seed(0)                      # blocks that draw from the global RNG
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.strip()    # every block prints what it shows


# runpy notes when a module was imported before it runs as __main__; harmless here.
@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_command_parses(command: list[str], monkeypatch, capsys):
    module, args = command[2], command[3:]
    monkeypatch.setattr(sys, "argv", [module, *args, "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    assert exit_.value.code in (0, None)
    assert "usage:" in capsys.readouterr().out


def test_set_up_is_two_commands_and_ci_runs_the_test_command():
    set_up = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = [code.strip() for lang, code in re.findall(r"^```(\w*)\n(.*?)^```$", set_up,
                                                          re.DOTALL | re.MULTILINE)]
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    install, test = commands
    assert install.endswith("python3 -m neuralnum demo")
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci.splitlines()
