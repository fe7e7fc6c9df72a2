"""Run files survive a full disk or a kill at any moment: written aside, renamed into place, resumable."""

import builtins
import contextlib
import errno
import io
import json
import os
from pathlib import Path

import pytest
import yaml

from masa.checkpoint import CHECKPOINTS_DIR, TRAINER_STATE, remove_partial_checkpoints
from masa.config import load_config
from masa.runfiles import append_jsonl, atomic_folder, keep_rows_up_to, remove_leftovers, write_text
from masa.trainer import Trainer, load_run_config


class _FailingFile:
    """A file whose writes stop half-way with "no space left on device"."""

    def __init__(self, real):
        self._real = real

    def write(self, data):
        self._real.write(data[: len(data) // 2])
        self._real.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._real, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._real.close()


@contextlib.contextmanager
def full_disk(folder: Path, name: str, *, below: bool = False):
    """While active, every write to a file in ``folder`` (``below``: or any folder under it) whose name
    contains ``name`` fails half-way, however it was opened (``open``, ``Path.write_text``, ``os.fdopen``):
    independent of how the code under test writes, so an in-place rewrite shows up as a cut file."""
    real_open = io.open

    def opening(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        path = Path(os.readlink(f"/proc/self/fd/{file}") if isinstance(file, int) else file)
        inside = path.parent == folder or (below and folder in path.parents)
        if any(m in mode for m in "wax+") and inside and name in path.name:
            return _FailingFile(handle)
        return handle

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(io, "open", opening)
        patch.setattr(builtins, "open", opening)
        yield


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_failed_rewrite_leaves_the_old_file_and_no_leftovers(tmp_path):
    path = tmp_path / "config.yaml"
    write_text(path, "old: 1\n")
    with full_disk(tmp_path, "config.yaml"), pytest.raises(OSError, match="No space"):
        write_text(path, "new: 2\n" * 1000)
    assert path.read_text() == "old: 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_a_failed_append_or_truncation_keeps_every_row(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, [{"step": s, "x": float("nan")} for s in (1, 2, 3)])
    before = path.read_text()
    assert _rows(path)[0] == {"step": 1, "x": None}
    with full_disk(tmp_path, "metrics.jsonl"):
        with pytest.raises(OSError):
            append_jsonl(path, [{"step": 4}])
        with pytest.raises(OSError):
            keep_rows_up_to(path, 1)
    assert path.read_text() == before


def test_truncation_keeps_rows_up_to_the_step_and_drops_a_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2}\n{"step": 3, "x"')
    with pytest.warns(UserWarning, match="not JSON"):
        keep_rows_up_to(path, 1)
    assert _rows(path) == [{"step": 0}, {"step": 1}]
    keep_rows_up_to(path, -1)
    assert path.read_text() == ""


def test_leftovers_of_killed_writers_are_removed_and_nothing_else(tmp_path):
    (tmp_path / ".config.yaml.ab12cd_9.tmp").write_text("half")
    (tmp_path / ".final.x1y2z3w4.tmp").mkdir()
    checkpoints = tmp_path / "checkpoints"
    for name in (".step-4-k2j3h4x1", ".step-6.a1b2c3d4.tmp", "step-2"):
        (checkpoints / name).mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl", ".hidden"):
        (tmp_path / name).write_text("keep")
    assert sorted(p.name for p in remove_leftovers(tmp_path)) == [
        ".config.yaml.ab12cd_9.tmp",
        ".final.x1y2z3w4.tmp",
    ]
    assert len(remove_partial_checkpoints(checkpoints)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".hidden",
        "checkpoints",
        "config.yaml",
        "metrics.jsonl",
    ]
    assert [p.name for p in checkpoints.iterdir()] == ["step-2"]


def test_a_failed_folder_save_keeps_the_old_folder(tmp_path):
    target = tmp_path / "final"
    with atomic_folder(target) as tmp:
        (tmp / "weights").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:
        (tmp / "weights").write_text("new, half")
        raise RuntimeError("killed")
    assert (target / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["final"]


# ------------------------------------------------------------------------------------------ whole runs
def _target_fraction(problem, texts, rollouts):
    return [sum(t < 5000 for t in r.completion_ids) / max(r.num_tokens, 1) for r in rollouts]


def _config(tmp_path, steps, *extra):
    return load_config(
        "tiny",
        overrides=[
            f"train.output_dir={tmp_path}",
            "data.eval=null",
            "algo=masa",
            "rollout.n=2",
            "meta.n=2",
            f"train.steps={steps}",
            "train.save_every=2",
            *extra,
        ],
    )


def _steps(path: Path) -> list[int]:
    return [row["step"] for row in _rows(path)]


def test_resume_survives_a_full_disk_in_each_window_with_its_whole_history(tmp_path):
    run = tmp_path / "run"
    Trainer(_config(tmp_path, 2), run_dir=run, reward_fn=_target_fraction).fit()
    history = {
        name: (run / name).read_text() for name in ("config.yaml", "metrics.jsonl", "meta_predictions.jsonl")
    }
    assert _steps(run / "meta_predictions.jsonl") == [1, 1, 2, 2]

    # Each file the resume rewrites (config, then each log's truncation), and the first appended log row.
    for name in history:
        with full_disk(run, name), pytest.raises(OSError, match="No space"):
            Trainer(_config(tmp_path, 4), run_dir=run, resume=True, reward_fn=_target_fraction).fit()
        assert (run / name).read_text() == history[name]
        assert not any(p.name.endswith(".tmp") for p in run.iterdir())

    resumed = Trainer(_config(tmp_path, 4), run_dir=run, resume=True, reward_fn=_target_fraction)
    assert resumed.step == 2
    resumed.fit()
    assert _steps(run / "metrics.jsonl") == [1, 2, 3, 4]
    assert _steps(run / "meta_predictions.jsonl") == [1, 1, 2, 2, 3, 3, 4, 4]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["steps"] == 4


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_zero(tmp_path):
    run = tmp_path / "run"
    Trainer(_config(tmp_path, 2), run_dir=run, reward_fn=_target_fraction).fit()
    # What a kill during step 2 of a run saving every 2 steps leaves: config, step 1's rows, half a save.
    for path in (run / CHECKPOINTS_DIR).iterdir():
        path.rename(path.with_name(".step-2-k2j3h4x1"))
    (run / "final").rename(run / ".final.a1b2c3d4.tmp")
    for name in ("metrics.jsonl", "meta_predictions.jsonl"):
        keep_rows_up_to(run / name, 1)

    with pytest.raises(FileExistsError, match=r"--resume .* starts again from step 0"):
        Trainer(_config(tmp_path, 2), run_dir=run)
    resumed = Trainer(load_run_config(run), run_dir=run, resume=True, reward_fn=_target_fraction)
    assert resumed.step == 0
    assert not (run / ".final.a1b2c3d4.tmp").exists()
    assert [p.name for p in (run / CHECKPOINTS_DIR).iterdir()] == []
    resumed.fit()
    assert _steps(run / "metrics.jsonl") == [1, 2]
    assert _steps(run / "meta_predictions.jsonl") == [1, 1, 2, 2]
    assert (run / CHECKPOINTS_DIR / "step-2" / TRAINER_STATE).is_file()


def test_a_folder_that_is_no_run_is_neither_overwritten_nor_resumed(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "todo.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a masa run"):
        Trainer(_config(tmp_path, 2), run_dir=folder)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        Trainer(_config(tmp_path, 2), run_dir=folder, resume=True)
    # Only the leftovers of a killed start: the folder counts as empty.
    leftovers = tmp_path / "killed"
    leftovers.mkdir()
    (leftovers / ".config.yaml.ab12cd34.tmp").write_text("ha")
    Trainer(_config(tmp_path, 2), run_dir=leftovers, reward_fn=_target_fraction)


def test_a_damaged_run_config_is_named(tmp_path):
    (tmp_path / "config.yaml").write_text("")
    with pytest.raises(ValueError, match=r"config.yaml is empty or damaged"):
        load_run_config(tmp_path)


def test_a_save_removes_the_folders_of_killed_saves(tmp_path, tiny):
    from masa.checkpoint import save_checkpoint

    model, tokenizer = tiny
    checkpoints = tmp_path / CHECKPOINTS_DIR
    (checkpoints / ".step-3-k2j3h4x1").mkdir(parents=True)  # a save killed mid-way, by an older version
    (checkpoints / ".step-3.a1b2c3d4.tmp").mkdir()
    saved = save_checkpoint(checkpoints, 4, model, tokenizer, {"note": "state"}, keep=2)
    assert [p.name for p in checkpoints.iterdir()] == ["step-4"]
    assert (saved / TRAINER_STATE).is_file() and (saved / "model.safetensors").is_file()


def test_a_full_disk_while_saving_the_trainer_state_is_named_and_keeps_earlier_checkpoints(tmp_path, tiny):
    import torch

    from masa.checkpoint import CheckpointError, save_checkpoint

    model, tokenizer = tiny
    checkpoints = tmp_path / CHECKPOINTS_DIR
    save_checkpoint(checkpoints, 4, model, tokenizer, {"note": "state"}, keep=2)
    # torch.save given a path writes through its own stream, where a full disk is a RuntimeError with no
    # cause; the optimiser state makes this the biggest file of a checkpoint, so the likeliest to hit it.
    big = {"optimizer": torch.zeros(200_000)}
    with (
        full_disk(checkpoints, TRAINER_STATE, below=True),
        pytest.raises(CheckpointError, match=r"No space left on device.*earlier checkpoints .* are intact"),
    ):
        save_checkpoint(checkpoints, 6, model, tokenizer, big, keep=2)
    assert [p.name for p in checkpoints.iterdir()] == ["step-4"]


def test_a_full_disk_while_writing_the_weights_is_named_and_loses_no_finished_model(
    tmp_path, tiny, monkeypatch
):
    import transformers.modeling_utils
    from safetensors import SafetensorError

    from masa.checkpoint import CheckpointError, save_checkpoint, save_model_folder

    model, tokenizer = tiny
    checkpoints = tmp_path / CHECKPOINTS_DIR
    save_checkpoint(checkpoints, 4, model, tokenizer, {"note": "state"}, keep=2)
    final = save_model_folder(tmp_path / "final", model, tokenizer)
    before = {p.name: p.read_bytes() for p in final.iterdir()}

    def disk_full(tensors, filename, metadata=None):
        # safetensors writes from Rust, past Python's open(): this is its error for ENOSPC, word for word.
        raise SafetensorError(
            f'Error while serializing: I/O error: No space left on device (os error 28) at path "{filename}"'
        )

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_full)
    with pytest.raises(CheckpointError, match=r"No space left on device.*earlier checkpoints .* are intact"):
        save_checkpoint(checkpoints, 6, model, tokenizer, {"note": "state"}, keep=2)
    assert [p.name for p in checkpoints.iterdir()] == ["step-4"]
    with pytest.raises(CheckpointError, match=r"could not write the model to .*final.*No space left"):
        save_model_folder(final, model, tokenizer)
    assert {p.name: p.read_bytes() for p in final.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name != CHECKPOINTS_DIR] == ["final"]


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_sharded_save_keeps_the_atomic_folder_guarantees(tmp_path, tiny):
    """One process stands for every rank: the shards, then rank 0's files, then the rename."""
    import torch
    import torch.distributed.checkpoint as dcp

    from masa.checkpoint import (
        SHARDS_DIR,
        CheckpointError,
        is_sharded,
        latest_checkpoint,
        save_sharded_checkpoint,
    )
    from masa.distributed import SINGLE_PROCESS

    model, tokenizer = tiny
    checkpoints = tmp_path / CHECKPOINTS_DIR
    (checkpoints / ".step-3.a1b2c3d4.tmp").mkdir(parents=True)  # a save killed mid-way

    def shards(folder):
        dcp.save({"model": model.state_dict()}, storage_writer=dcp.FileSystemWriter(folder))

    def save(step, write_shards=shards):
        return save_sharded_checkpoint(
            checkpoints,
            step,
            write_shards,
            model.config,
            tokenizer,
            {"note": step},
            keep=2,
            ranks=SINGLE_PROCESS,
        )

    saved = save(4)
    assert [p.name for p in checkpoints.iterdir()] == ["step-4"] and is_sharded(saved)
    assert (saved / "config.json").is_file() and (saved / "tokenizer.json").is_file()
    assert sorted(p.name for p in (saved / SHARDS_DIR).iterdir()) == [".metadata", "__0_0.distcp"]
    assert not list(saved.rglob("*.safetensors"))
    assert torch.load(saved / TRAINER_STATE, weights_only=False)["note"] == 4

    def disk_full(folder):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CheckpointError, match="earlier checkpoints .* are intact"):
        save(5, disk_full)
    assert [p.name for p in checkpoints.iterdir()] == ["step-4"]
    save(4, disk_full)  # a complete step-4 is kept, not rewritten
    assert torch.load(saved / TRAINER_STATE, weights_only=False)["note"] == 4
    save(6)
    save(8)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-6", "step-8"]
    assert latest_checkpoint(checkpoints) == checkpoints / "step-8"
