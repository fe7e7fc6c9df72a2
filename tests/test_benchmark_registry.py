"""Benchmark resolution: the built-in split, local copies of the paper's benchmarks, files, and errors."""

import json

import pytest

from masa.config import DataConfig
from masa.data.arithmetic import arithmetic_splits
from masa.data.loaders import DataError
from masa.eval import benchmarks
from masa.eval.benchmarks import REGISTRY, BenchmarkError, resolve_benchmark


def test_registry_covers_the_papers_benchmarks():
    assert {"aime24", "aime25", "amc23", "math500", "minerva", "olympiadbench", "math"} <= set(REGISTRY)


@pytest.mark.parametrize(("name", "rows"), [("aime25", 30), ("amc23", 40)])
def test_local_copies_load_from_the_data_folder(shared_data, name, rows):
    benchmark = resolve_benchmark(name, data_dir=shared_data)
    assert benchmark.name == name
    assert benchmark.source.endswith(".parquet")
    assert len(benchmark.problems) == rows
    assert all(p.prompt.strip() and p.answer for p in benchmark.problems)
    assert len({p.id for p in benchmark.problems}) == rows


def test_data_folder_comes_from_the_environment(shared_data, monkeypatch):
    monkeypatch.setenv(benchmarks.DATA_DIR_ENV, str(shared_data))
    assert len(resolve_benchmark("aime25").problems) == 30


def test_math_levels_select_the_easy_rows(shared_data):
    easy = resolve_benchmark("math", data_dir=shared_data, levels=[1, 2])
    assert easy.problems
    assert {p.difficulty for p in easy.problems} == {1, 2}
    assert len(resolve_benchmark("math", data_dir=shared_data, levels=[1, 2], limit=5).problems) == 5


def test_arithmetic_is_the_trainers_held_out_split():
    _, held_out = arithmetic_splits(seed=0, n_eval=DataConfig.eval_size)
    assert resolve_benchmark("arithmetic").problems == held_out
    level_one = resolve_benchmark("arithmetic", levels=[1]).problems
    assert level_one and all(p.difficulty == 1 for p in level_one)


def test_a_local_file_is_a_benchmark_named_after_it(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"question": "What is 1 + 1?", "answer": 2}) + "\n")
    benchmark = resolve_benchmark(str(path))
    assert benchmark.name == "mine"
    assert [(p.prompt, p.answer) for p in benchmark.problems] == [("What is 1 + 1?", "2")]


def test_levels_need_a_benchmark_with_levels(tmp_path):
    path = tmp_path / "flat.jsonl"
    path.write_text(json.dumps({"problem": "x", "answer": "1"}) + "\n")
    with pytest.raises(BenchmarkError, match="no difficulty levels"):
        resolve_benchmark(str(path), levels=[1])


def test_unknown_benchmark_lists_what_exists():
    with pytest.raises(BenchmarkError, match="aime25.*no such file"):
        resolve_benchmark("aime2099")


def test_unreachable_benchmark_says_what_was_tried(tmp_path, monkeypatch):
    def offline(source, **kwargs):
        raise DataError("no such file, and loading it as a hub dataset failed: offline", source=source)

    monkeypatch.setattr(benchmarks, "load_problems", offline)
    with pytest.raises(BenchmarkError) as caught:
        resolve_benchmark("aime24", data_dir=tmp_path)
    message = str(caught.value)
    assert str(tmp_path) in message and "aime2024-test.parquet" in message
    assert REGISTRY["aime24"].hub_id in message and "offline" in message
    assert "--data-dir" in message and benchmarks.DATA_DIR_ENV in message

    monkeypatch.delenv(benchmarks.DATA_DIR_ENV, raising=False)
    with pytest.raises(BenchmarkError, match="no data folder was given"):
        resolve_benchmark("aime24")
