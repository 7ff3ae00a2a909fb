"""neuralnum.core.runtime: atomic checkpoints, safe loading, metrics resume, DDP helpers."""

import os
import pickle

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from learner_standins import one_thread  # noqa: F401 (autouse fixture)

from neuralnum.core.runtime import (
    CheckpointError,
    Distributed,
    MetricsLog,
    check_output_path,
    generator_state,
    load_checkpoint,
    make_generator,
    restore_generator,
    save_checkpoint,
)


def test_checkpoint_round_trip(tmp_path):
    state = {"w": torch.arange(4.0, dtype=torch.float64), "step": 3, "name": "x",
             "nested": {"lst": [1, 2.5]}}
    path = save_checkpoint(tmp_path / "c.pt", state)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["w"], state["w"]) and loaded["w"].dtype == torch.float64
    assert loaded["step"] == 3 and loaded["nested"] == {"lst": [1, 2.5]}


def test_checkpoint_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "c.pt", {"v": torch.ones(2)})

    def broken_save(obj, fh, *args, **kwargs):
        fh.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"v": torch.zeros(2)})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["v"], torch.ones(2))  # old file intact
    assert sorted(os.listdir(tmp_path)) == ["c.pt"]  # no temporary left behind


def test_checkpoint_interrupted_by_ctrl_c_leaves_no_partial_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "c.pt", {"v": torch.ones(2)})

    def interrupted_save(obj, fh, *args, **kwargs):
        fh.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"v": torch.zeros(2)})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["v"], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["c.pt"]


def test_damaged_checkpoint_says_what_to_do(tmp_path):
    path = tmp_path / "c.pt"
    path.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(CheckpointError, match=r"cannot load checkpoint .*c\.pt: it is damaged "
                                              r"or not a checkpoint .*write it again") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


def test_metrics_log_drops_a_torn_last_line_and_names_a_damaged_one(tmp_path):
    path = tmp_path / "m.jsonl"
    log = MetricsLog(path)
    for step in (1, 2):
        log.log(step, loss=0.5)
    with path.open("a") as fh:
        fh.write('{"step": 3, "lo')  # the process died mid-line
    assert [r["step"] for r in MetricsLog.read(path)] == [1, 2]
    resumed = MetricsLog(path, resume_step=3)  # resuming rewrites the log whole
    assert path.read_text().endswith("}\n") and len(resumed.records) == 2
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"m\.jsonl line 2 is not JSON"):
        MetricsLog.read(path)


def test_output_paths_are_checked_before_any_work(tmp_path):
    a_file = tmp_path / "f"
    a_file.write_text("")
    assert check_output_path(tmp_path / "new" / "deeper", "--out") == tmp_path / "new" / "deeper"
    assert check_output_path(a_file, directory=False) == a_file
    with pytest.raises(NotADirectoryError, match=r"--out .*f/x: .*f is a file, not a dir"):
        check_output_path(a_file / "x", "--out")
    with pytest.raises(NotADirectoryError, match="is a file: pass a directory path"):
        check_output_path(a_file)
    with pytest.raises(IsADirectoryError, match="is a directory: pass a file path"):
        check_output_path(tmp_path, directory=False)
    run = tmp_path / "new" / "run"
    assert check_output_path(run / "a.pt", directory=False, suffix=".pt") == run / "a.pt"
    with pytest.raises(ValueError, match=r"--out .*run names the file to write and must end "
                                         r"in \.pt, e\.g\. .*run/learner\.pt$"):
        check_output_path(run, "--out", directory=False, suffix=".pt")
    with pytest.raises(ValueError, match=r"must end in \.pt, e\.g\. .*run/a\.pt$"):
        check_output_path(run / "a.ckpt", directory=False, suffix=".pt")
    assert not (tmp_path / "new").exists()  # nothing created


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_checkpoint",))


def test_weights_only_refuses_malicious_pickle(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        torch.save({"payload": _Exploit()}, fh, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned_by_checkpoint").exists()


def test_missing_and_non_dict_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="does not hold a dict"):
        load_checkpoint(tmp_path / "list.pt")


@given(st.integers(1, 30), st.integers(0, 30))
def test_metrics_log_resume_truncates(tmp_path_factory, total, resume_at):
    path = tmp_path_factory.mktemp("m") / "metrics.jsonl"
    log = MetricsLog(path)
    for step in range(1, total + 1):
        log.log(step, loss=float(step), nan=float("nan"))
    resumed = MetricsLog(path, resume_step=resume_at)
    kept = MetricsLog.read(path)
    assert [r["step"] for r in kept] == list(range(1, min(total, resume_at) + 1))
    assert resumed.records == kept
    resumed.log(resume_at + 1, loss=0.0)
    assert MetricsLog.read(path)[-1] == {"step": resume_at + 1, "loss": 0.0}
    assert all(r["nan"] == "nan" for r in kept)


def test_metrics_log_fresh_start_clears_file(tmp_path):
    path = tmp_path / "m.jsonl"
    MetricsLog(path).log(1, a=1)
    MetricsLog(path)
    assert MetricsLog.read(path) == []


def test_generator_state_round_trip():
    gen = make_generator(7)
    state = generator_state(gen)
    first = torch.rand(5, generator=gen)
    restore_generator(gen, state)
    assert torch.equal(torch.rand(5, generator=gen), first)
    with pytest.raises(ValueError, match="seed"):
        make_generator(-1)


@given(st.integers(1, 8), st.integers(1, 64))
def test_shard_divides_or_raises(world, batch):
    dist = Distributed(rank=0, world_size=world)
    if batch % world:
        with pytest.raises(ValueError, match="not divisible"):
            dist.shard(batch)
    else:
        assert dist.shard(batch) * world == batch


def test_single_process_helpers_are_identity():
    dist = Distributed()
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(dist.all_reduce_mean(t), torch.tensor([1.0, 2.0]))
    assert not dist.enabled and dist.is_main
