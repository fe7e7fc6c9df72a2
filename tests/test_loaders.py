import builtins
import csv
import json
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from masa.data.loaders import DataError, FieldMap, load_problems
from masa.data.problem import Problem

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

ROWS = [
    {"prompt": "What is 1 + 1?", "answer": "2", "source": "toy"},
    {"prompt": "What is half of one?", "answer": "\\frac{1}{2}", "source": "toy"},
]


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    path = write(tmp_path / f"toy{suffix}", ROWS)
    problems = load_problems(str(path), fields=FieldMap(metadata=("source",)))
    assert problems == [
        Problem(id="toy-0", prompt="What is 1 + 1?", answer="2", metadata={"source": "toy"}),
        Problem(id="toy-1", prompt="What is half of one?", answer="\\frac{1}{2}", metadata={"source": "toy"}),
    ]
    assert load_problems(str(path), fields=FieldMap(metadata=("source",)), limit=1) == problems[:1]


def test_dotted_fields_numbers_and_ids(tmp_path: Path) -> None:
    rows = [
        {"q": {"text": "Compute 6 * 7."}, "meta": {"gt": 42, "key": "a"}, "extra": {"index": 5}},
        {"q": {"text": "Compute 1 / 4."}, "meta": {"gt": 0.25, "key": 7}},
    ]
    fields = FieldMap(prompt="q.text", answer="meta.gt", id="meta.key", metadata=("extra.index",))
    problems = load_problems(str(write(tmp_path / "nested.jsonl", rows)), fields=fields)
    assert [(p.id, p.prompt, p.answer, p.metadata) for p in problems] == [
        ("a", "Compute 6 * 7.", "42", {"index": 5}),
        ("7", "Compute 1 / 4.", "0.25", {}),
    ]


def test_auto_detects_plain_aliases_but_not_solution(tmp_path: Path) -> None:
    rows = [{"problem": "What is 2 + 2?", "solution": "2 + 2 = \\boxed{4}", "final_answer": 4}]
    [problem] = load_problems(str(write(tmp_path / "plain.json", rows)))
    assert (problem.prompt, problem.answer) == ("What is 2 + 2?", "4")
    with pytest.raises(DataError, match="no answer field"):
        load_problems(str(write(tmp_path / "only_solution.json", [{"problem": "p", "solution": "s"}])))


def test_auto_detects_verl_layout(tmp_path: Path) -> None:
    row = {
        "data_source": "toy",
        "prompt": [
            {"role": "system", "content": "Think."},
            {"role": "user", "content": "What is 3 + 4?"},
        ],
        "reward_model": {"ground_truth": "7", "style": "rule"},
    }
    [problem] = load_problems(str(write(tmp_path / "verl.parquet", [row])))
    assert (problem.prompt, problem.answer, problem.metadata) == (
        "What is 3 + 4?",
        "7",
        {"data_source": "toy"},
    )


@pytest.mark.parametrize(
    ("name", "rows", "difficulties"),
    [("aime2025-test", 30, {None}), ("amc23-test", 40, {None}), ("math-test", 4999, {1, 2, 3, 4, 5})],
)
def test_real_verl_files(name: str, rows: int, difficulties: set[int | None]) -> None:
    path = SHARED_DATA / f"{name}.parquet"
    if not path.exists():
        pytest.skip(f"{path} is not present")
    problems = load_problems(str(path), skip_invalid=True)
    assert len(problems) == rows
    assert all(p.prompt.strip() and p.answer.strip() for p in problems)
    assert {p.difficulty for p in problems} == difficulties
    assert all(p.metadata["data_source"] for p in problems)
    if name == "aime2025-test":
        assert problems[0].answer == "70" and problems[0].prompt.startswith(
            "Find the sum of all integer bases"
        )
    if name == "math-test":
        assert problems[0].metadata["type"] == "Algebra"
        # The file has one row with an empty target; strict loading names it.
        with pytest.raises(DataError, match=r"row 3527, field 'reward_model.ground_truth.target': empty"):
            load_problems(str(path))


@pytest.mark.parametrize(
    ("row", "field", "problem"),
    [
        ({"prompt": "p"}, "answer", "missing"),
        ({"prompt": "p", "answer": "  "}, "answer", "empty"),
        ({"prompt": "", "answer": "1"}, "prompt", "empty"),
        ({"prompt": ["a", "b"], "answer": "1"}, "prompt", "expected a string, got list"),
        ({"prompt": "p", "answer": ["1"]}, "answer", "expected a string, got list"),
        ({"prompt": [{"role": "system", "content": "s"}], "answer": "1"}, "prompt", "without a user message"),
    ],
)
def test_malformed_row_names_file_row_and_field(
    tmp_path: Path, row: dict[str, Any], field: str, problem: str
) -> None:
    path = write(tmp_path / "bad.jsonl", [ROWS[0], ROWS[1], row])
    with pytest.raises(DataError) as info:
        load_problems(str(path), fields=FieldMap())
    message = str(info.value)
    assert "bad.jsonl" in message and "row 3" in message and repr(field) in message and problem in message
    assert [p.id for p in load_problems(str(path), fields=FieldMap(), skip_invalid=True)] == [
        "bad-0",
        "bad-1",
    ]


def test_invalid_json_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n{not json\n")
    with pytest.raises(DataError, match=r"broken.jsonl, row 2: invalid JSON"):
        load_problems(str(path))


@pytest.mark.parametrize("source", ["missing.jsonl", "data/sub/missing", "./missing", "/no/such/dir/x"])
def test_missing_file(tmp_path: Path, source: str) -> None:
    # ``owner/name`` would be a hub name; these cannot be, so they fail without a network call.
    with pytest.raises(DataError, match="no such file"):
        load_problems(str(tmp_path / source) if source == "missing.jsonl" else source)


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "problems.txt"
    path.write_text("What is 1 + 1?")
    with pytest.raises(DataError, match="unsupported format"):
        load_problems(str(path))


def test_hub_without_datasets_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_datasets(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "datasets", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(DataError, match=r"pip install 'masa\[hub\]'"):
        load_problems("someone/some-dataset")


@pytest.fixture
def reachable_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fake `datasets` modules below stand in for the hub; the reachability probe must not stop them.
    monkeypatch.setattr("masa.data.loaders.hub_unreachable", lambda: None)


@pytest.mark.usefixtures("reachable_hub")
def test_hub_load_failure_is_a_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeDatasets:
        @staticmethod
        def load_dataset(source: str, split: str) -> None:
            raise FileNotFoundError(f"{source} not found on the hub")

    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets)
    with pytest.raises(DataError, match="no such file.*hub dataset.*not found on the hub"):
        load_problems("someone/some-dataset")


@pytest.mark.usefixtures("reachable_hub")
def test_hub_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeDatasets:
        @staticmethod
        def load_dataset(source: str, split: str) -> list[dict[str, Any]]:
            assert (source, split) == ("someone/toy", "test")
            return [{"question": "What is 5 - 2?", "answer": "3"}]

    monkeypatch.setitem(sys.modules, "datasets", FakeDatasets)
    [problem] = load_problems("someone/toy", split="test")
    assert (problem.id, problem.prompt, problem.answer) == ("toy-test-0", "What is 5 - 2?", "3")


@pytest.mark.parametrize(
    ("name", "data", "where"),
    [
        ("a.jsonl", b'{"problem": "1", "answer": "2"}\n\n{"problem": "caf\xe9", "answer": "3"}\n', "row 2"),
        # A quoted field spanning lines, and a byte-order mark: the bad byte is still in record 2.
        ("a.csv", b'\xef\xbb\xbfproblem,answer\n"two\nlines",2\nx\xff,3\n', "row 2"),
        ("h.csv", b"probl\xe9m,answer\n1,2\n", "header"),
        ("a.json", b'[{"problem": "1", "answer": "2"},\n{"problem": "\xff", "answer": "2"}]', "line 2"),
    ],
)
def test_bytes_that_are_not_utf8_name_file_and_row(
    tmp_path: Path, name: str, data: bytes, where: str
) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(DataError) as raised:
        load_problems(str(path))
    assert str(raised.value).startswith(
        f"{path}, {where}: not UTF-8" if "row" in where else f"{path}: {where}"
    )
    assert "not UTF-8 (byte 0x" in str(raised.value)


def test_a_missing_answer_field_says_how_to_name_it(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"question": "1+1?", "solution": "2"}\n')
    with pytest.raises(
        DataError, match=r"\(the row has question, solution\); name it with data\.answer_field="
    ):
        load_problems(str(path))
