"""Benchmarks by name: the built-in arithmetic split, the paper's math benchmarks, or any local file.

A registry benchmark is read from a local copy when one is found in the data folder (``--data-dir`` or the
``MASA_DATA_DIR`` environment variable), else from the Hugging Face hub. Local copies are read with the
loader's layout detection, so both the verl layout (``prompt`` chat messages, ``reward_model.ground_truth``)
and plain hub exports work; the registry's field maps describe the hub datasets.

Hub ids are the well-known public copies at the time of writing; owners rename and restructure datasets,
so if one stops loading, save the benchmark as a file under one of the local names and use the data folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from masa.config import DataConfig
from masa.data.arithmetic import arithmetic_splits
from masa.data.loaders import DataError, FieldMap, load_problems
from masa.data.problem import Problem

__all__ = [
    "ARITHMETIC",
    "DATA_DIR_ENV",
    "REGISTRY",
    "Benchmark",
    "BenchmarkError",
    "BenchmarkSpec",
    "default_data_dir",
    "local_candidates",
    "resolve_benchmark",
]

ARITHMETIC = "arithmetic"
DATA_DIR_ENV = "MASA_DATA_DIR"
_LOCAL_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")


class BenchmarkError(ValueError):
    """A benchmark that cannot be found or loaded; the message says what was tried and what to do."""


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a named benchmark lives: its hub dataset and the file names a local copy may have."""

    name: str
    description: str
    hub_id: str
    split: str
    fields: FieldMap
    local_stems: tuple[str, ...]
    """File names without suffix, most specific first; each is tried with .parquet, .jsonl, .json, .csv."""


REGISTRY: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        # AI-MO/aimo-validation-aime mixes 2022-2024 (90 problems); this copy holds exactly the 30 of 2024.
        BenchmarkSpec(
            "aime24",
            "AIME 2024 (30 problems)",
            "HuggingFaceH4/aime_2024",
            "train",
            FieldMap(prompt="problem", answer="answer", id="id"),
            ("aime2024-test", "aime24-test", "aime2024", "aime24"),
        ),
        BenchmarkSpec(
            "aime25",
            "AIME 2025 (30 problems)",
            "math-ai/aime25",
            "test",
            FieldMap(prompt="problem", answer="answer", id="id"),
            ("aime2025-test", "aime25-test", "aime2025", "aime25"),
        ),
        BenchmarkSpec(
            "amc23",
            "AMC 2023 (40 problems)",
            "math-ai/amc23",
            "test",
            FieldMap(prompt="question", answer="answer", id="id"),
            ("amc23-test", "amc2023-test", "amc23", "amc2023"),
        ),
        BenchmarkSpec(
            "math500",
            "MATH-500, the 500-problem MATH test subset (levels 1-5)",
            "HuggingFaceH4/MATH-500",
            "test",
            FieldMap(prompt="problem", answer="answer", id="unique_id", metadata=("level", "subject")),
            ("math500-test", "math-500-test", "math500", "math-500"),
        ),
        BenchmarkSpec(
            "minerva",
            "Minerva math (272 problems)",
            "math-ai/minervamath",
            "test",
            FieldMap(prompt="question", answer="answer"),
            ("minerva-test", "minervamath-test", "minerva", "minervamath"),
        ),
        # math-ai/olympiadbench stores final_answer as a list, which the loader does not take; this copy of
        # it has the answer as a string.
        BenchmarkSpec(
            "olympiadbench",
            "OlympiadBench, English text-only math (675 problems)",
            "zkshan2002/olympiad_bench",
            "test",
            FieldMap(prompt="problem", answer="answer"),
            ("olympiadbench-test", "olympiad-test", "olympiadbench", "olympiad_bench"),
        ),
        # This copy has no answer column: the reference is the worked solution, and the answer checker
        # compares against its last \boxed{}.
        BenchmarkSpec(
            "math",
            "MATH test split (5000 problems, levels 1-5; filter with --levels)",
            "DigitalLearningGmbH/MATH-lighteval",
            "test",
            FieldMap(prompt="problem", answer="solution", metadata=("level", "type")),
            ("math-test", "math"),
        ),
    )
}


@dataclass(frozen=True)
class Benchmark:
    name: str
    source: str
    """Where the problems came from: a file path, a hub id, or ``arithmetic``."""
    problems: list[Problem]


def default_data_dir() -> Path | None:
    value = os.environ.get(DATA_DIR_ENV)
    return Path(value).expanduser() if value else None


def local_candidates(spec: BenchmarkSpec, data_dir: Path) -> list[Path]:
    return [data_dir / f"{stem}{suffix}" for stem in spec.local_stems for suffix in _LOCAL_SUFFIXES]


def resolve_benchmark(
    name_or_file: str,
    *,
    data_dir: Path | None = None,
    levels: Sequence[int] | None = None,
    limit: int | None = None,
    fields: FieldMap | None = None,
) -> Benchmark:
    """Load a benchmark: ``arithmetic``, a registry name, or a JSONL/JSON/CSV/parquet file.

    ``levels`` keeps the problems whose difficulty (MATH level, arithmetic level) is listed; ``limit`` then
    keeps the first problems. ``data_dir`` defaults to ``$MASA_DATA_DIR``. ``fields`` says where a file's
    prompt and answer are (detected when None); named benchmarks know their own layout.
    """
    if name_or_file == ARITHMETIC:
        # The split the trainer holds out at its defaults (seed 0, data.eval_size 100). The training split of a
        # run with another seed or eval_size holds some of these prompts (benchmarks/fresh_problems.py draws
        # problems outside a run's splits).
        _, problems = arithmetic_splits(seed=0, n_eval=DataConfig.eval_size)
        benchmark = Benchmark(ARITHMETIC, ARITHMETIC, problems)
    elif name_or_file in REGISTRY:
        benchmark = _load_registered(REGISTRY[name_or_file], data_dir or default_data_dir())
    elif Path(name_or_file).expanduser().is_file():
        path = Path(name_or_file).expanduser()
        benchmark = Benchmark(path.stem, str(path), load_problems(str(path), fields=fields))
    else:
        raise BenchmarkError(
            f"unknown benchmark {name_or_file!r}: not {ARITHMETIC!r}, not one of the named benchmarks "
            f"({', '.join(REGISTRY)}), and no such file"
        )
    problems = benchmark.problems
    if levels:
        problems = _select_levels(benchmark.name, problems, levels)
    if limit is not None:
        problems = problems[:limit]
    return Benchmark(benchmark.name, benchmark.source, problems)


def _load_registered(spec: BenchmarkSpec, data_dir: Path | None) -> Benchmark:
    # A public benchmark may carry a known bad row (MATH has one with an empty answer); it is dropped with a
    # warning rather than making the whole benchmark unusable.
    if data_dir is not None:
        for path in local_candidates(spec, data_dir):
            if path.is_file():
                return Benchmark(spec.name, str(path), load_problems(str(path), skip_invalid=True))
    try:
        problems = load_problems(spec.hub_id, fields=spec.fields, split=spec.split, skip_invalid=True)
    except DataError as exc:
        if data_dir is None:
            local = f"no data folder was given (--data-dir or ${DATA_DIR_ENV})"
        else:
            names = ", ".join(f"{stem}.parquet" for stem in spec.local_stems)
            local = f"no local copy in {data_dir} (looked for {names}, also as .jsonl/.json/.csv)"
        raise BenchmarkError(
            f"cannot load benchmark {spec.name!r}: {local}, and loading it from the hub failed ({exc}). "
            f"Put a copy named {spec.local_stems[0]}.parquet "
            f"in a folder and pass --data-dir FOLDER (or set {DATA_DIR_ENV}), or pass the file itself as "
            "--benchmark PATH."
        ) from exc
    return Benchmark(spec.name, spec.hub_id, problems)


def _select_levels(name: str, problems: list[Problem], levels: Sequence[int]) -> list[Problem]:
    found = {level for p in problems if (level := _level(p)) is not None}
    if not found:
        raise BenchmarkError(
            f"benchmark {name!r} has no difficulty levels, so --levels cannot select from it"
        )
    wanted = set(levels)
    selected = [p for p in problems if _level(p) in wanted]
    if not selected:
        raise BenchmarkError(
            f"benchmark {name!r} has no problems of levels {sorted(wanted)}; its levels are {sorted(found)}"
        )
    return selected


def _level(problem: Problem) -> int | None:
    # The loader turns MATH's "Level 3" into difficulty 3; hub copies such as MATH-500 store a bare integer.
    value: Any = problem.metadata.get("difficulty", problem.metadata.get("level"))
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return None
