"""Every file a run writes goes through here: written aside in the same folder, synced, renamed into place.

A kill, a crash or a full disk at any moment leaves each file either as it was or as it is meant to be,
never empty or cut short. The rename is atomic because the temporary file sits in the target's own folder
(same file system); the temporary names are recognisable, so a run folder's leftovers can be told apart
from its content and removed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Literal

TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


@contextlib.contextmanager
def atomic_writer(
    path: str | os.PathLike[str], mode: Literal["w", "wb"] = "w", *, copy_existing: bool = False
) -> Iterator[IO[Any]]:
    """A file handle whose content replaces ``path`` when the block finishes without an exception.

    ``copy_existing`` starts the new file as a copy of the current one (an append that can never leave a
    torn last line). If the block raises, ``path`` is untouched and the temporary file is removed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    try:
        with os.fdopen(handle, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as stream:
            if copy_existing and target.exists():
                stream.flush()
                with target.open("rb") as source:
                    shutil.copyfileobj(source, stream.buffer if mode == "w" else stream)
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_writer(path) as stream:
        stream.write(text)
    return Path(path)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_writer(path, "wb") as stream:
        stream.write(data)
    return Path(path)


def json_line(row: dict[str, Any]) -> str:
    """One JSON-lines row; JSON has no NaN, so a missing statistic (say, a correlation of constant
    values) is written as null."""
    return json.dumps({k: _finite(v) for k, v in row.items()}, ensure_ascii=False) + "\n"


def append_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    """Append rows to a JSON-lines file by writing the whole new file aside and renaming it.

    The copy costs a few milliseconds for the megabytes a long run logs, and buys a file that is never
    seen half-appended.
    """
    text = "".join(json_line(row) for row in rows)
    if text:
        with atomic_writer(path, copy_existing=True) as stream:
            stream.write(text)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; a corrupt line (say, from an older, non-atomic writer) is
    skipped with a warning."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{number}: skipping a line that is not JSON", stacklevel=2)
                continue
            if not isinstance(row, dict):
                warnings.warn(f"{path}:{number}: skipping a line that is not a JSON object", stacklevel=2)
                continue
            rows.append(row)
    return rows


def keep_rows_up_to(path: str | os.PathLike[str], step: int) -> None:
    """Drop the rows logged after ``step`` (those of a resumed run's lost steps), so each step appears once.

    The kept rows are written aside and renamed: a kill here leaves either the old or the new history,
    never an empty file.
    """
    path = Path(path)
    if not path.exists():
        return
    kept = [row for row in read_jsonl(path) if isinstance(row.get("step"), int) and row["step"] <= step]
    write_text(path, "".join(json_line(row) for row in kept))


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary file or folder of this module (a leftover if no writer runs)."""
    return bool(_TEMP_NAME.match(name))


def remove_leftovers(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files and folders a killed writer left in ``folder``; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = [p for p in folder.iterdir() if is_temp_name(p.name)]
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return removed


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary folder next to ``target`` that replaces it, synced to disk, when the block succeeds.

    Readers see the old folder or the complete new one; only the instant between removing an old
    ``target`` and the rename has neither (callers avoid replacing folders they cannot lose).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent))
    try:
        yield tmp
        fsync_tree(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fsync_tree(folder: str | os.PathLike[str]) -> None:
    """Flush every file under ``folder`` to disk, so a rename of the folder never outlives its content."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename inside ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not sync directories; the rename is still atomic
    finally:
        os.close(fd)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
