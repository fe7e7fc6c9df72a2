"""Load problems from local files (JSONL, JSON, CSV, Parquet) or from a Hugging Face hub dataset."""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from masa.data.problem import Problem
from masa.hub import hub_offline, hub_unreachable

__all__ = ["DataError", "FieldMap", "load_problems"]

_FORMATS = (".jsonl", ".json", ".csv", ".parquet")

# Used only when no FieldMap is given, first match wins. ``solution`` is deliberately absent: in MATH it is a
# worked solution, not an answer. The verl layout nests the answer under ``reward_model.ground_truth``,
# either directly or (in these benchmark files) as its ``target``.
_PROMPT_ALIASES = ("prompt", "problem", "question")
_ANSWER_ALIASES = (
    "answer",
    "final_answer",
    "target",
    "ground_truth",
    "reward_model.ground_truth.target",
    "reward_model.ground_truth",
)
_METADATA_ALIASES = ("data_source", "level", "type", "difficulty", "answer_form")
_MATH_LEVEL = re.compile(r"Level (\d+)")

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A source that cannot be turned into problems.

    The message names the source, the 1-based row (the first record is row 1, whatever the format) and the
    field when they are known.
    """

    def __init__(self, message: str, *, source: str, row: int | None = None, field: str | None = None):
        where = ", ".join(
            [source] + ([f"row {row}"] if row is not None else []) + ([f"field {field!r}"] if field else [])
        )
        super().__init__(f"{where}: {message}")
        self.reason, self.source, self.row, self.field = message, source, row, field


@dataclass(frozen=True)
class FieldMap:
    """Where each part of a problem lives in a row; a dotted name (``reward_model.ground_truth``) looks
    into nested objects.

    ``id`` defaults to ``{name}-{row index}``. ``metadata`` fields are copied into ``Problem.metadata``
    under their last name component (``extra_info.index`` becomes ``index``); a row without one simply
    lacks that key, because metadata is descriptive and often sparse.
    """

    prompt: str = "prompt"
    answer: str = "answer"
    id: str | None = None
    metadata: tuple[str, ...] = ()


def load_problems(
    source: str,
    *,
    fields: FieldMap | None = None,
    split: str = "train",
    limit: int | None = None,
    skip_invalid: bool = False,
) -> list[Problem]:
    """Load problems from a file, chosen by suffix, or from a hub dataset named ``source``.

    Without ``fields`` the layout is detected from the first row: the prompt is ``prompt``, ``problem`` or
    ``question``; the answer is ``answer``, ``final_answer``, ``target``, ``ground_truth`` or verl's
    ``reward_model.ground_truth``; ``data_source``, ``level``, ``type`` and ``difficulty`` go to metadata
    when present (a MATH ``level`` of ``"Level 3"`` also sets difficulty 3). A prompt may be a list of
    chat messages, whose last ``user`` message is taken. Numeric answers become strings; prompt text is
    kept as is. ``split`` applies to hub datasets only; ``limit`` caps the number of problems returned.

    A malformed row (missing or empty prompt or answer, wrong type) raises ``DataError``, or with
    ``skip_invalid`` is dropped with a warning; problem ids still count the dropped rows, so an id always
    names its source row.
    """
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() not in _FORMATS:
            raise DataError(f"unsupported format; expected one of {', '.join(_FORMATS)}", source=source)
        name, rows = path.stem, _read_file(path, source)
    elif path.exists():
        raise DataError("is a directory; pass a .jsonl, .json, .csv or .parquet file", source=source)
    elif _looks_like_path(source):
        raise DataError("no such file", source=source)
    else:
        name, rows = f"{source.rsplit('/', 1)[-1]}-{split}", _read_hub(source, split)

    problems: list[Problem] = []
    skipped: list[DataError] = []
    for index, row in enumerate(rows):
        if limit is not None and len(problems) >= limit:
            break
        if not isinstance(row, dict):
            error = DataError(f"expected an object, got {type(row).__name__}", source=source, row=index + 1)
        else:
            fields = fields or _detect_fields(row, index, source)
            try:
                problems.append(_to_problem(row, index, name, fields, source))
                continue
            except DataError as exc:
                error = exc
        if not skip_invalid:
            raise error
        skipped.append(error)
    if skipped:
        logger.warning("skipped %d malformed rows; the first: %s", len(skipped), skipped[0])
    if not problems and limit != 0:
        raise DataError("contains no usable rows", source=source)
    return problems


def _looks_like_path(source: str) -> bool:
    # Hub names are ``name`` or ``owner/name``; anything else with a slash or a data suffix is a file path.
    return (
        Path(source).suffix.lower() in _FORMATS
        or source.startswith(("/", ".", "~"))
        or "\\" in source
        or source.count("/") > 1
    )


def _read_file(path: Path, source: str) -> Iterator[Any]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return iter(pq.read_table(path).to_pylist())
        except Exception as exc:
            raise DataError(f"cannot read parquet: {exc}", source=source) from exc
    if suffix == ".csv":
        return _read_csv(path, source)
    if suffix == ".json":
        raw = path.read_bytes()
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise DataError(f"line {line}: {_not_utf8(raw, exc)}", source=source) from exc
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc}", source=source) from exc
        if not isinstance(data, list):
            raise DataError("expected a JSON list of objects", source=source)
        return iter(data)
    return _read_jsonl(path, source)


def _read_jsonl(path: Path, source: str) -> Iterator[Any]:
    with path.open("rb") as lines:
        row = 0
        for raw in lines:
            if not raw.strip():
                continue
            row += 1
            try:
                yield json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise DataError(_not_utf8(raw, exc), source=source, row=row) from exc
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON: {exc}", source=source, row=row) from exc


def _read_csv(path: Path, source: str) -> Iterator[dict[str, Any]]:
    # Spreadsheet programs write a byte-order mark, which would corrupt the first header.
    raw = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # The record holding the bad byte: count the records before it (quoted fields may span lines).
        before = raw[: exc.start].decode("utf-8")
        records = sum(1 for _ in csv.reader(io.StringIO(before)))
        row = records if not before or before.endswith(("\n", "\r")) else records - 1
        if row == 0:
            raise DataError(f"header: {_not_utf8(raw, exc)}", source=source) from exc
        raise DataError(_not_utf8(raw, exc), source=source, row=row) from exc
    yield from csv.DictReader(io.StringIO(text, newline=""))


def _not_utf8(raw: bytes, exc: UnicodeDecodeError) -> str:
    return f"not UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"


def _read_hub(source: str, split: str) -> Iterator[Any]:
    try:
        import datasets
    except ImportError as exc:
        raise DataError(
            "no such file, and hub datasets need the 'datasets' package: pip install 'masa[hub]'",
            source=source,
        ) from exc
    reason = hub_unreachable()
    if reason and not hub_offline():
        raise DataError(
            f"no such file, and the Hugging Face hub is unreachable to load it as a dataset: {reason} "
            "(for a dataset in the local cache, set HF_HUB_OFFLINE=1)",
            source=source,
        )
    try:
        return iter(datasets.load_dataset(source, split=split))
    except Exception as exc:
        raise DataError(
            f"no such file, and loading it as a hub dataset (split {split!r}) failed: {exc}", source=source
        ) from exc


def _detect_fields(row: dict[str, Any], index: int, source: str) -> FieldMap:
    def first_present(aliases: tuple[str, ...], role: str) -> str:
        for alias in aliases:
            if _lookup(row, alias) is not None:
                return alias
        raise DataError(
            f"no {role} field among {', '.join(aliases)} (the row has {', '.join(map(str, row)) or 'none'}); "
            f"name it with data.{role}_field=FIELD (masa train), --{role}-field FIELD (masa eval) "
            f"or fields=FieldMap({role}=...) (Python)",
            source=source,
            row=index + 1,
            field=role,
        )

    return FieldMap(
        prompt=first_present(_PROMPT_ALIASES, "prompt"),
        answer=first_present(_ANSWER_ALIASES, "answer"),
        metadata=tuple(name for name in _METADATA_ALIASES if _lookup(row, name) is not None),
    )


def _lookup(row: dict[str, Any], dotted: str) -> Any:
    value: Any = row
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _to_problem(row: dict[str, Any], index: int, name: str, fields: FieldMap, source: str) -> Problem:
    def get(field: str) -> Any:
        value = _lookup(row, field)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise DataError("missing", source=source, row=index + 1, field=field)
        return value

    def text(field: str, value: Any, *, numbers_ok: bool) -> str:
        if numbers_ok and isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise DataError(
                f"expected a string, got {type(value).__name__}", source=source, row=index + 1, field=field
            )
        if not value.strip():
            raise DataError("empty", source=source, row=index + 1, field=field)
        return value

    prompt = get(fields.prompt)
    if _is_chat(prompt):
        prompt = next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), None)
        if prompt is None:
            raise DataError(
                "chat messages without a user message", source=source, row=index + 1, field=fields.prompt
            )
    metadata = {
        field.rsplit(".", 1)[-1]: value
        for field in fields.metadata
        if (value := _lookup(row, field)) is not None
    }
    level = metadata.get("level")
    if "difficulty" not in metadata and isinstance(level, str) and (match := _MATH_LEVEL.fullmatch(level)):
        metadata["difficulty"] = int(match.group(1))
    return Problem(
        id=text(fields.id, get(fields.id), numbers_ok=True) if fields.id else f"{name}-{index}",
        prompt=text(fields.prompt, prompt, numbers_ok=False),
        answer=text(fields.answer, get(fields.answer), numbers_ok=True).strip(),
        metadata=metadata,
    )


def _is_chat(value: Any) -> bool:
    return (
        isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "content" in m for m in value)
    )
