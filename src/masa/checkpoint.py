"""Atomic, exactly-resumable training checkpoints: full (gathered, written by rank 0) or sharded (DCP)."""

from __future__ import annotations

import contextlib
import random
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from torch.distributed.checkpoint import CheckpointException
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from masa.config import TrainConfig
from masa.distributed import Ranks
from masa.runfiles import atomic_folder, is_temp_name, remove_leftovers
from masa.tracking import CONFIG_FILE

_STEP_DIR = re.compile(r"^step-(\d+)$")
# Temporary folders of saves killed mid-way: ``.step-N.xxxxxxxx.tmp`` (``.step-N-xxxxxxxx`` before 0.2).
_PARTIAL_DIR = re.compile(r"^\.step-\d+[-.]")
TRAINER_STATE = "trainer_state.pt"
CHECKPOINTS_DIR = "checkpoints"
SHARDS_DIR = "dcp"
"""In a sharded ``step-N``: the torch.distributed.checkpoint folder (every rank's shards and their index)."""
_SHARDS_INDEX = ".metadata"  # written by DCP's coordinator last, once every rank's shards are on disk


class CheckpointError(RuntimeError):
    pass


WRITE_ERRORS = (OSError, SafetensorError)
"""What a failed write of a model folder raises: safetensors writes the weights from Rust, and a full disk
there is its own ``SafetensorError`` ("... No space left on device (os error 28) ..."), not an OSError."""


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_state(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` through a Python file, so that a failed write (a full disk) raises its OSError.

    Given a path, torch writes through its own C++ stream, and a full disk surfaces as a RuntimeError
    ("iostream error", "unexpected pos") that names no cause; through a Python file the OSError is that
    RuntimeError's context.
    """
    with path.open("wb") as handle:
        try:
            torch.save(state, handle)
        except RuntimeError as exc:
            if isinstance(exc.__context__, OSError):
                raise exc.__context__ from exc
            raise


def save_checkpoint(
    checkpoints_dir: Path,
    step: int,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    trainer_state: dict[str, Any],
    *,
    keep: int,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Write ``step-N`` under a temporary name, flush it to disk and rename it into place.

    A crash or a full disk mid-write leaves the previous checkpoints untouched and no half-written folder
    that resuming could mistake for a complete one; the temporary folders a killed save leaves behind are
    removed by the next save (or resume). A complete ``step-N`` that already exists is kept as it is: it
    is the checkpoint a resumed run started from, and deleting it before its replacement is in place
    would open a window in which a kill loses it.
    """
    remove_partial_checkpoints(checkpoints_dir)
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    target = checkpoints_dir / f"step-{step}"
    if not (target / TRAINER_STATE).is_file():
        try:
            with atomic_folder(target) as tmp:
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
                _write_extra_files(tmp, extra_files)
                _save_state({**trainer_state, "rng": rng_state(), "step": step}, tmp / TRAINER_STATE)
        except WRITE_ERRORS as exc:
            raise CheckpointError(
                f"could not write checkpoint {target} ({exc}); "
                f"earlier checkpoints in {checkpoints_dir} are intact"
            ) from exc
    _prune(checkpoints_dir, keep)
    return target


def writes_sharded(train: TrainConfig, *, distributed: bool, state_bytes: int) -> bool:
    """Whether a run's checkpoints are sharded (DCP) rather than gathered and written by rank 0.

    ``state_bytes`` is what a full checkpoint gathers: the trainable weights and their optimiser state.
    One process holds all of it anyway, so it always writes a full checkpoint.
    """
    if not distributed or train.checkpoint_format == "full":
        return False
    if train.checkpoint_format == "sharded":
        return True
    return state_bytes > train.sharded_checkpoint_above_gb * 1e9


def is_sharded(checkpoint: Path) -> bool:
    return (checkpoint / SHARDS_DIR / _SHARDS_INDEX).is_file()


def save_sharded_checkpoint(
    checkpoints_dir: Path,
    step: int,
    write_shards: Callable[[Path], None],
    model_config: PretrainedConfig,
    tokenizer: PreTrainedTokenizerBase,
    trainer_state: dict[str, Any],
    *,
    keep: int,
    ranks: Ranks,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """``save_checkpoint`` for state too large to gather (collective: every rank calls it).

    Every rank writes its shards into rank 0's temporary folder (``write_shards``, given the DCP folder);
    rank 0 adds the model's config.json, the tokenizer and ``trainer_state.pt``, and renames the folder
    into place once every rank's shards are written. The guarantees are ``save_checkpoint``'s: a failed
    or killed save leaves the earlier checkpoints as they were, its temporary folder is removed by the next
    save or resume, and a complete ``step-N`` is kept. The folder must be on a file system all ranks see.
    """
    target = checkpoints_dir / f"step-{step}"
    if ranks.is_main:
        remove_partial_checkpoints(checkpoints_dir)
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
    if not ranks.from_main((target / TRAINER_STATE).is_file()):
        try:
            with _shared_atomic_folder(target, ranks) as tmp:
                write_shards(tmp / SHARDS_DIR)
                if ranks.is_main:
                    model_config.save_pretrained(tmp)
                    tokenizer.save_pretrained(tmp)
                    _write_extra_files(tmp, extra_files)
                    _save_state({**trainer_state, "rng": rng_state(), "step": step}, tmp / TRAINER_STATE)
        except (OSError, CheckpointException) as exc:
            raise CheckpointError(
                f"could not write checkpoint {target} ({exc}); "
                f"earlier checkpoints in {checkpoints_dir} are intact"
            ) from exc
    if ranks.is_main:
        _prune(checkpoints_dir, keep)
    # No rank goes on (and possibly saves again) before the folder is in place.
    ranks.barrier()
    return target


@contextlib.contextmanager
def _shared_atomic_folder(target: Path, ranks: Ranks) -> Iterator[Path]:
    """Rank 0's ``atomic_folder``, written into by every rank: renamed into place when all have finished."""
    if not ranks.is_main:
        yield ranks.from_main(target)
        ranks.barrier()
        return
    with atomic_folder(target) as tmp:
        yield ranks.from_main(tmp)
        ranks.barrier()


def _prune(checkpoints_dir: Path, keep: int) -> None:
    for old in list_checkpoints(checkpoints_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def save_model_folder(
    folder: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Save a loadable model folder (a run's ``final/``) aside and rename it into place."""
    try:
        with atomic_folder(folder) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            _write_extra_files(tmp, extra_files)
    except WRITE_ERRORS as exc:
        raise CheckpointError(f"could not write the model to {folder} ({exc})") from exc
    return folder


def _write_extra_files(folder: Path, extra_files: Mapping[str, str] | None) -> None:
    """Text files that travel with the weights (``masa.meta.record``'s); the caller's atomic folder makes
    them appear with the rest or not at all."""
    for name, text in (extra_files or {}).items():
        (folder / name).write_text(text)


def remove_partial_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Remove the temporary ``.step-N-*`` folders of saves that were killed mid-way."""
    if not checkpoints_dir.is_dir():
        return []
    partial = [p for p in checkpoints_dir.iterdir() if p.is_dir() and _PARTIAL_DIR.match(p.name)]
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return partial


def resume_point(run_dir: Path, *, resume: bool) -> Path | None:
    """The checkpoint a run in ``run_dir`` starts from: None means step 0.

    A new run needs a folder without a run in it. Resuming needs a run folder (its ``config.yaml``); one
    killed before its first checkpoint starts again from step 0, so there is always a way forward. The
    temporary files and folders of writes that were killed mid-way are removed first.
    """
    checkpoints_dir = run_dir / CHECKPOINTS_DIR
    if not resume:
        content = [p for p in run_dir.iterdir() if not is_temp_name(p.name)] if run_dir.is_dir() else []
        if not content:
            remove_leftovers(run_dir)
            return None
        if (run_dir / CONFIG_FILE).is_file():
            fresh = (
                ""
                if latest_checkpoint(checkpoints_dir)
                else " (it has no checkpoint yet, so it starts again from step 0 with its saved config)"
            )
            raise FileExistsError(
                f"run folder {run_dir} already exists; resume it with `masa train --resume {run_dir}`"
                f"{fresh} or pick another train.run_name"
            )
        raise FileExistsError(
            f"folder {run_dir} already exists and is not a masa run (no {CONFIG_FILE}); "
            "pick another train.run_name or train.output_dir"
        )
    if not (run_dir / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"nothing to resume: {run_dir} is not a masa run folder (no {CONFIG_FILE})")
    remove_leftovers(run_dir)
    remove_partial_checkpoints(checkpoints_dir)
    return latest_checkpoint(checkpoints_dir)


def list_checkpoints(checkpoints_dir: Path) -> list[Path]:
    if not checkpoints_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in checkpoints_dir.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found) if (p / TRAINER_STATE).is_file()]


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    found = list_checkpoints(checkpoints_dir)
    return found[-1] if found else None


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    # weights_only=False: the state holds Python RNG tuples and numpy arrays written by this library itself.
    return torch.load(checkpoint / TRAINER_STATE, weights_only=False)
