"""Every command of the project minds its manners.

The commands are found, not listed: ``python -m neuralnum`` and every module of ours that
ends in ``if __name__ == "__main__":`` (``structured.train``, ``structured.models``, each
study, ``studies.report``). Each is run as ``python -m`` runs it (``runpy``, as
``__main__``, in this process: one interpreter start for all) with each class of bad input
that applies to it — a bad flag, a bad flag value, an unwritable output path, a missing or
damaged checkpoint, a learner used at a shape it cannot serve, a missing optional
dependency — and must end with status 2, its last line on stderr ``<prog>: error: …`` (only
argparse's usage lines before it), and no traceback; ``--debug`` / ``NEURALNUM_DEBUG=1``
show the traceback instead. Each ``--help`` ends with two or three example commands of the
same command, whose flags it lists (``neuralnum`` and ``structured.train``'s examples are
parsed and validated too). Two real subprocesses: a damaged checkpoint, and Ctrl-C in the
middle of training (status 130, one line, no partial file).
"""

from __future__ import annotations

import json
import os
import re
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from learner_standins import one_thread  # noqa: F401 (autouse fixture)

from neuralnum.core.entry import one_line
from neuralnum.core.runtime import load_checkpoint
from neuralnum.solvers.learner import Learner
from structured import data as structured_data

ROOT = Path(__file__).resolve().parent.parent
ENTRY = 'if __name__ == "__main__":'
#: What ``python -m`` runs: the package ``neuralnum`` and every module with a main block.
COMMANDS = ["neuralnum", *(".".join(p.relative_to(ROOT).with_suffix("").parts)
                           for package in ("neuralnum", "structured", "studies", "kernels")
                           for p in sorted((ROOT / package).rglob("*.py"))
                           if ENTRY in p.read_text())]
STUDIES = sorted(c for c in COMMANDS if c.startswith("studies.") and c != "studies.report")
#: The flags of ``neuralnum train`` that keep a run tiny.
TINY = ["--n", "6", "--d", "2", "--eval-batch", "8", "--batch-size", "8",
        "--max-batch-size", "8"]

pytestmark = pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")


def run(command: str, argv: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``python -m command *argv`` in this process: ``(status, stdout, stderr)``. Any
    exception other than ``SystemExit`` escapes (a traceback, i.e. a failure)."""
    monkeypatch.setattr(sys, "argv", [command, *argv])
    monkeypatch.setenv("NEURALNUM_PROGRESS", "0")
    monkeypatch.delenv("NEURALNUM_DEBUG", raising=False)
    with pytest.raises(SystemExit) as ended:
        runpy.run_module(command, run_name="__main__", alter_sys=True)
    out = capsys.readouterr()
    code = ended.value.code
    return (0 if code is None else code if isinstance(code, int) else 1), out.out, out.err


def assert_one_line_error(command: str, status: int, err: str, *match: str,
                          case: str = "") -> None:
    """Status 2, and stderr = argparse's usage lines (if any), then ``<prog>: error: …``
    naming ``match``; no traceback. ``case`` names the input in a failure."""
    lines = err.rstrip("\n").split("\n")
    assert status == 2, (case, err)
    assert "Traceback" not in err, case
    assert re.fullmatch(rf"python -m {re.escape(command)}[\w ]*: error: .+", lines[-1]), (
        case, err)
    assert all(x.startswith(("usage:", " ")) for x in lines[:-1]), (case, err)
    for text in match:
        assert text in lines[-1], (case, lines[-1])


@pytest.fixture
def learner_file(tmp_path: Path) -> Path:
    """A learner checkpoint trained for (n, d) = (6, 2) (no training: the file is what
    counts)."""
    return Learner("linear_attention", "gd", n=6, d=2).save(tmp_path / "learner.pt")


@pytest.fixture
def damaged(tmp_path: Path) -> Path:
    path = tmp_path / "damaged.pt"
    path.write_bytes(b"PK\x03\x04 not a whole zip archive")
    return path


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    """A plain file: a directory that cannot be created under it."""
    path = tmp_path / "a_file"
    path.write_text("")
    return path


# --------------------------------------------------------------------------- bad input
def _neuralnum_cases(tmp: Path, learner: Path, damaged: Path, a_file: Path) -> dict:
    out = tmp / "runs" / "learner.pt"
    return {
        "unknown flag": (["train", "--bogus", "1"], "unrecognized arguments"),
        "flag value argparse refuses": (["train", "--steps", "many"], "--steps"),
        "flag value the config refuses": (["train", "--lr", "0", "--steps", "1"], "lr"),
        "run without an end": (["train", *TINY, "--out", str(out)], "--steps"),
        "unwritable output": (["train", "--steps", "1", "--out", str(a_file / "l.pt")],
                              "is a file, not a directory"),
        "output is a directory": (["train", "--steps", "1", "--out", str(tmp)],
                                  "pass a file path"),
        "output is not a .pt file": (["demo", "--out", str(tmp / "runs" / "demo")],
                                     "must end in .pt, e.g. ", "demo/learner.pt"),
        **{f"{command}: bad thread count": ([command, "--threads", "0"],
                                            "--threads", "must be a positive int")
           for command in ("train", "solve", "pretrain")},
        "missing checkpoint": (["solve", "--checkpoint", str(tmp / "nope.pt")],
                               "checkpoint not found"),
        "damaged checkpoint": (["solve", "--checkpoint", str(damaged)],
                               "is damaged or not a checkpoint", "write it again"),
        "damaged checkpoint to resume": (
            ["train", *TINY, "--steps", "2", "--resume", "--out", str(damaged)],
            "is damaged or not a checkpoint"),
        "learner used at another shape": (
            ["solve", "--checkpoint", str(learner), "--n", "40"],
            "trained at n=6, d=2", "pass --n 6 --d 2"),
        "checkpoint of another kind": (
            ["solve", "--checkpoint", str(_structured_checkpoint(tmp))],
            "not a neuralnum learner checkpoint"),
    }


def _structured_checkpoint(tmp: Path) -> Path:
    path = tmp / "other.pt"
    torch.save({"format": "structured.train/2"}, path)
    return path


def test_neuralnum_user_errors_end_in_one_line(tmp_path, learner_file, damaged, a_file,
                                               monkeypatch, capsys):
    cases = _neuralnum_cases(tmp_path, learner_file, damaged, a_file)
    for name, (argv, *match) in cases.items():
        status, _, err = run("neuralnum", argv, monkeypatch, capsys)
        assert_one_line_error("neuralnum", status, err, *match, case=name)
    assert not (tmp_path / "runs").exists()  # refused before any work


def test_structured_train_user_errors_end_in_one_line(tmp_path, damaged, a_file,
                                                      monkeypatch, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "ckpt.pt").write_bytes(damaged.read_bytes())
    tiny = ["--steps", "1", "--d-model", "8", "--n-layers", "1", "--seq-len", "16",
            "--batch-size", "2", "--no-plot"]
    cases = {
        "unknown flag": (["--bogus"], "unrecognized arguments"),
        "flag value argparse refuses": (["--task", "chess"], "invalid choice"),
        "flag value the config refuses": (["--steps", "0"], "steps must be a positive"),
        "bad thread count": ([*tiny, "--threads", "-1", "--out-dir", str(out)], "threads"),
        "unwritable output": (["--out-dir", str(a_file / "run")], "is a file"),
        "damaged checkpoint to resume": ([*tiny, "--resume", "--out-dir", str(out)],
                                         "is damaged or not a checkpoint"),
    }
    for name, (argv, *match) in cases.items():
        status, _, err = run("structured.train", argv, monkeypatch, capsys)
        assert_one_line_error("structured.train", status, err, *match, case=name)
    # scikit-learn missing: the vision task says how to install it, before training
    for name in ("sklearn", "sklearn.datasets"):  # as if scikit-learn were not installed
        monkeypatch.setitem(sys.modules, name, None)
    structured_data._digits_arrays.cache_clear()
    status, _, err = run("structured.train", [*tiny, "--task", "vision", "--patch-size", "2",
                                              "--out-dir", str(tmp_path / "vision")],
                         monkeypatch, capsys)
    assert_one_line_error("structured.train", status, err,
                          'needs scikit-learn: pip install -e ".[data]"')
    assert not (tmp_path / "vision" / "ckpt.pt").exists()


def test_structured_models_user_errors_end_in_one_line(monkeypatch, capsys):
    for argv, match in ((["--d-model", "0"], "d_model"), (["--seq-len", "x"], "--seq-len")):
        status, _, err = run("structured.models", argv, monkeypatch, capsys)
        assert_one_line_error("structured.models", status, err, match)


@pytest.mark.parametrize("study", STUDIES)
def test_every_study_refuses_bad_input_in_one_line(study, tmp_path, a_file, monkeypatch,
                                                   capsys):
    cases = {"unknown flag": (["--bogus"], "unrecognized arguments"),
             "two modes": (["--quick", "--full"], "not allowed with"),
             "unwritable output": (["--out", str(a_file / "out")], "is a file"),
             "output is a file": (["--out", str(a_file)], "pass a directory path")}
    if "--threads" in run(study, ["--help"], monkeypatch, capsys)[1]:
        cases["bad thread count"] = (["--threads", "0", "--out", str(tmp_path)], "--threads")
    for name, (argv, *match) in cases.items():
        status, _, err = run(study, argv, monkeypatch, capsys)
        assert_one_line_error(study, status, err, *match, case=name)


def test_report_user_errors_end_in_one_line(tmp_path, monkeypatch, capsys):
    for argv, match in ((["--bogus"], "unrecognized"),
                        (["--readme", str(tmp_path / "none.md")], "none.md"),
                        (["--readme", str(tmp_path)], "Is a directory")):
        status, _, err = run("studies.report", argv, monkeypatch, capsys)
        assert_one_line_error("studies.report", status, err, match)
    tables = tmp_path / "results.md"
    tables.write_text("<!-- study:a -->\n")  # an unclosed marker
    status, _, err = run("studies.report", ["--check", "--results-md", str(tables)],
                         monkeypatch, capsys)
    assert_one_line_error("studies.report", status, err, "markers do not pair up")


def test_report_check_keeps_its_exit_status(tmp_path, monkeypatch, capsys):
    """``--check`` exits 1 when docs/results.md differs from the results (``main``'s
    return value), 0 once re-rendered."""
    tables, readme = tmp_path / "results.md", tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text())
    text = (ROOT / "docs" / "results.md").read_text()
    marker = re.search(r"<!-- study:[\w-]+ -->\n", text)
    tables.write_text(text[:marker.end()] + "stale\n" + text[marker.end():])
    argv = ["--check", "--results-md", str(tables), "--readme", str(readme)]
    assert run("studies.report", argv, monkeypatch, capsys)[0] == 1
    assert run("studies.report", argv[1:], monkeypatch, capsys)[0] == 0
    assert run("studies.report", argv, monkeypatch, capsys)[0] == 0


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    argv = ["solve", "--checkpoint", str(tmp_path / "nope.pt")]
    monkeypatch.setattr(sys, "argv", ["neuralnum", *argv, "--debug"])
    with pytest.raises(RuntimeError, match="checkpoint not found"):
        runpy.run_module("neuralnum", run_name="__main__", alter_sys=True)
    monkeypatch.setattr(sys, "argv", ["neuralnum", *argv])
    monkeypatch.setenv("NEURALNUM_DEBUG", "1")
    with pytest.raises(RuntimeError, match="checkpoint not found"):
        runpy.run_module("neuralnum", run_name="__main__", alter_sys=True)


def test_one_line_says_what_to_do():
    missing = ModuleNotFoundError("No module named 'sklearn'", name="sklearn.datasets")
    assert one_line(missing).endswith('install it (pip install -e ".[data]")')
    other = ModuleNotFoundError("No module named 'zarr'", name="zarr")
    assert one_line(other).endswith("install it (pip install zarr)")
    denied = PermissionError(13, "Permission denied", "/root/x.json")
    assert one_line(denied) == ("Permission denied: /root/x.json (check that the path exists "
                                "and can be written, or pass another one)")
    assert one_line(ValueError("two\n  lines")) == "two lines"
    assert one_line(ValueError()) == "ValueError"


# --------------------------------------------------------------------------- help
def _examples(text: str) -> tuple[str, list[str]]:
    """``text`` split into the help above its last ``examples:`` line and the example
    commands that end it."""
    lines = text.rstrip("\n").split("\n")
    start = max(i for i, line in enumerate(lines) if line.strip() == "examples:")
    return "\n".join(lines[:start]), [line.strip() for line in lines[start + 1:]]


def _parsers() -> dict:
    from neuralnum.cli import parse_command
    from structured.train import parse_config

    return {"neuralnum": parse_command, "structured.train": parse_config}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_ends_with_examples_that_run_as_written(command, monkeypatch, capsys):
    status, text, _ = run(command, ["--help"], monkeypatch, capsys)
    assert status == 0
    helps, examples = _examples(text)
    assert 2 <= len(examples) <= 3, text[-500:]
    for example in examples:
        assert example.startswith(f"python -m {command}"), example
        argv = example.split()[3:]
        if command == "neuralnum":  # the flags of the sub-command, in full
            helps, again = _examples(run(command, [argv[0], "--help"], monkeypatch, capsys)[1])
            assert again == examples
        flags = [a.split("=")[0] for a in argv if a.startswith("--")]
        assert all(re.search(rf"{re.escape(f)}(?![\w-])", helps) for f in flags), example
        if command in _parsers():
            _parsers()[command](argv)  # parsed and validated by the configs


# --------------------------------------------------------------------------- subprocesses
def _python(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "NEURALNUM_PROGRESS": "0"}
    env.pop("NEURALNUM_DEBUG", None)
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_a_real_process_prints_one_line_for_a_damaged_checkpoint(damaged):
    proc = _python("-m", "neuralnum", "solve", "--checkpoint", str(damaged))
    _, err = proc.communicate(timeout=120)
    assert_one_line_error("neuralnum", proc.returncode, err, "damaged")


def test_ctrl_c_prints_one_line_and_leaves_no_partial_file(tmp_path):
    """SIGINT while a run checkpoints every step and logs every step: status 130, one
    line, every file whole (no temporary file, every metrics line JSON, the checkpoint
    loads)."""
    out = tmp_path / "run"
    ckpt, metrics = out / "learner.pt", out / "learner.jsonl"
    proc = _python("-m", "neuralnum", "train", *TINY, "--arch", "linear_attention",
                   "--steps", "1000000", "--log-every", "1", "--checkpoint-every", "1",
                   "--out", str(ckpt))
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 3 and ckpt.exists()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().split("\n") == ["python -m neuralnum: interrupted (files written so "
                                       "far are complete)"]
    assert sorted(p.name for p in out.iterdir()) == ["learner.jsonl", "learner.pt"]
    text = metrics.read_text()
    assert text.endswith("\n") and all(json.loads(line) for line in text.splitlines())
    assert load_checkpoint(ckpt)["step"] >= 1
    Learner.load(ckpt)
