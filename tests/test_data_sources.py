"""Dataset loaders: every format round-trips, and every bad input fails with a located one-liner."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from immunelm.config import load_config
from immunelm.data.examples import Example
from immunelm.data.sources import (
    DataSourceConfig,
    describe_examples,
    load_examples,
    save_examples_jsonl,
)
from immunelm.errors import ImmuneLMError

ROWS = [
    {"q": "What is 2+2?", "a": "4", "sys": "Be terse.", "task": "math"},
    {"q": "Capital of France?", "a": "Paris", "sys": "", "task": "geo"},
    {"q": "Say hi", "a": "Hi!", "sys": "", "task": "chat"},
]
MAPPING = dict(prompt_column="q", response_column="a", system_column="sys", meta_columns=["task"])
CHAT = [
    {"role": "system", "content": "You are kind."},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi there"},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def load(path: Path, **kw) -> list[Example]:
    return load_examples(DataSourceConfig(path=str(path), **kw))


def expect_error(path: Path, *parts: str, **kw) -> str:
    """Load must fail with one line containing the file name and every given substring."""
    with pytest.raises(ImmuneLMError) as info:
        load(path, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    assert path.name in msg, msg
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"
    return msg


def check_rows(examples: list[Example]) -> None:
    assert [e.prompt for e in examples] == ["What is 2+2?", "Capital of France?", "Say hi"]
    assert [e.response for e in examples] == ["4", "Paris", "Hi!"]
    assert examples[0].messages[0] == {"role": "system", "content": "Be terse."}
    assert [m["role"] for m in examples[1].messages] == ["user", "assistant"]
    assert [e.meta for e in examples] == [{"task": "math"}, {"task": "geo"}, {"task": "chat"}]


# --- round trips -------------------------------------------------------------------------------


def test_jsonl_with_mapping(tmp_path):
    check_rows(load(write_jsonl(tmp_path / "d.jsonl", ROWS), **MAPPING))


def test_json_list_and_data_wrapper(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps(ROWS), encoding="utf-8")
    check_rows(load(tmp_path / "d.json", **MAPPING))
    (tmp_path / "w.json").write_text(json.dumps({"version": 2, "data": ROWS}), encoding="utf-8")
    check_rows(load(tmp_path / "w.json", **MAPPING))


def test_csv_with_mapping_quotes_and_bom(tmp_path):
    text = (
        '\ufeffq,a,sys,task\n"What is 2+2?",4,Be terse.,math\n'
        "Capital of France?,Paris,,geo\n\nSay hi,Hi!,,chat\n"
    )
    check_rows(load(write_csv(tmp_path / "d.csv", text), **MAPPING))


def test_csv_multiline_cell(tmp_path):
    path = write_csv(tmp_path / "d.csv", 'prompt,response\n"two\nlines",ok\n')
    assert load(path)[0].prompt == "two\nlines"


def test_parquet_with_mapping(tmp_path):
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    check_rows(load(tmp_path / "d.parquet", **MAPPING))


def test_explicit_format_overrides_extension(tmp_path):
    path = write_jsonl(tmp_path / "d.txt", ROWS)
    check_rows(load(path, format="jsonl", **MAPPING))


def test_messages_column_autodetected_and_explicit(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"messages": CHAT, "id": 7}])
    (ex,) = load(path, meta_columns=["id"])
    assert ex.messages == tuple(CHAT) and ex.meta == {"id": 7}
    assert ex.prompt == "Hello" and ex.response == "Hi there"
    other = write_jsonl(tmp_path / "c.jsonl", [{"conv": CHAT}])
    assert load(other, messages_column="conv")[0].messages == tuple(CHAT)


def test_messages_in_csv_as_json_text_and_parquet_structs(tmp_path):
    cell = json.dumps(CHAT).replace('"', '""')
    path = write_csv(tmp_path / "m.csv", f'messages\n"{cell}"\n')
    assert load(path)[0].messages == tuple(CHAT)
    pq.write_table(pa.Table.from_pylist([{"messages": CHAT}]), tmp_path / "m.parquet")
    assert load(tmp_path / "m.parquet")[0].messages == tuple(CHAT)


def test_save_then_load_round_trip(tmp_path):
    examples = [
        Example(tuple(CHAT), {"task": "a", "n": 1}),
        Example.pair("Q é", "R ü\u2028x", task="b", n=2),
    ]
    out = save_examples_jsonl(examples, tmp_path / "sub" / "out.jsonl")
    assert out.is_file() and not list(out.parent.glob(".*tmp"))
    back = load(out, meta_columns=["task", "n"])
    assert [e.messages for e in back] == [e.messages for e in examples]
    assert [e.meta for e in back] == [{"task": "a", "n": 1}, {"task": "b", "n": 2}]


def test_save_rejects_meta_named_messages(tmp_path):
    with pytest.raises(ImmuneLMError, match="example 1.*messages"):
        save_examples_jsonl([Example.pair("q", "r", messages="x")], tmp_path / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists()


# --- limit / shuffle ---------------------------------------------------------------------------


def test_limit_and_shuffle_are_deterministic(tmp_path):
    rows = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(20)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    assert [e.prompt for e in load(path, limit=3)] == ["p0", "p1", "p2"]
    a = [e.prompt for e in load(path, shuffle_seed=1, limit=5)]
    b = [e.prompt for e in load(path, shuffle_seed=1, limit=5)]
    c = [e.prompt for e in load(path, shuffle_seed=2, limit=5)]
    assert a == b and a != c and len(set(a)) == 5
    full = [e.prompt for e in load(path, shuffle_seed=1)]
    assert full[:5] == a and sorted(full) == sorted(r["prompt"] for r in rows) and full != sorted(full)


def test_describe_examples():
    examples = [Example.pair("abcd", "xy", system="s"), Example.pair("ab", "wxyz")]
    assert describe_examples(examples) == {
        "rows": 2,
        "mean_prompt_chars": 3.0,
        "mean_response_chars": 3.0,
        "max_prompt_chars": 4,
        "max_response_chars": 4,
        "with_system": 1,
        "multi_turn": 0,
    }
    assert describe_examples([])["rows"] == 0


# --- config validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({}, "exactly one"),
        ({"path": "a.jsonl", "hub": "x/y"}, "exactly one"),
        ({"path": "a.jsonl", "prompt_column": "x", "response_column": "x"}, "different"),
        ({"path": "a.jsonl", "messages_column": "m", "system_column": "s"}, "system_column"),
        ({"path": "a.jsonl", "limit": 0}, "greater than"),
        ({"path": "a.jsonl", "format": "xml"}, "format"),
        ({"path": "a.jsonl", "promt_column": "x"}, "promt_column"),
    ],
)
def test_config_rejects(kwargs, fragment):
    with pytest.raises(ValidationError, match=fragment):
        DataSourceConfig(**kwargs)


def test_every_field_has_help_text():
    assert all(f.description for f in DataSourceConfig.model_fields.values())


def test_load_config_gives_one_line_error(tmp_path):
    with pytest.raises(ImmuneLMError, match="exactly one"):
        load_config(DataSourceConfig, overrides=["split=test"])


# --- file-level errors -------------------------------------------------------------------------


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.jsonl", "file not found")


def test_unknown_extension(tmp_path):
    expect_error(write_csv(tmp_path / "d.txt", "x"), "'.txt'", "format=")


def test_not_utf8_points_at_first_bad_byte(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9", "response": "b"}\n')
    expect_error(path, "line 2", "UTF-8", "0xe9", "column 16", "byte offset 48")


def test_not_utf8_column_counts_characters_after_bom(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffprompt,response\né,\xff\n".encode("utf-8").replace(b"\xc3\xbf", b"\xff"))
    expect_error(path, "line 2", "0xff", "column 3", "byte offset 22")


def test_not_utf8_csv(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"prompt,response\nok,fine\n\xff,x\n")
    expect_error(path, "line 3", "0xff", "column 1")


def test_malformed_jsonl_line(tmp_path):
    path = write_csv(tmp_path / "d.jsonl", '{"prompt": "a", "response": "b"}\n\n{"prompt": "a",\n')
    expect_error(path, "line 3", "invalid JSON")


def test_jsonl_line_not_object(tmp_path):
    expect_error(write_jsonl(tmp_path / "d.jsonl", [[1, 2]]), "line 1", "JSON object", "list")


def test_malformed_json_file_hints_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "d.json", ROWS)
    expect_error(path, "line 2", "invalid JSON", "format=jsonl")


def test_json_not_a_list(tmp_path):
    (tmp_path / "d.json").write_text('{"rows": []}', encoding="utf-8")
    expect_error(tmp_path / "d.json", "list of objects", "'rows'")
    (tmp_path / "e.json").write_text('[{"prompt": "a", "response": "b"}, 3]', encoding="utf-8")
    expect_error(tmp_path / "e.json", "row 2", "JSON object", "int")


def test_empty_dataset(tmp_path):
    expect_error(write_csv(tmp_path / "e.jsonl", "\n\n"), "empty dataset", "0 rows")
    expect_error(write_csv(tmp_path / "h.csv", "prompt,response\n"), "empty dataset")
    (tmp_path / "l.json").write_text('{"data": []}', encoding="utf-8")
    expect_error(tmp_path / "l.json", "empty dataset")


def test_csv_wrong_field_count_and_duplicate_header(tmp_path):
    path = write_csv(tmp_path / "d.csv", "prompt,response\na,b\nc,d,e\n")
    expect_error(path, "row 2 (line 3)", "3 fields", "header has 2")
    expect_error(write_csv(tmp_path / "h.csv", "prompt,prompt\na,b\n"), "line 1", "duplicate column 'prompt'")


def test_unreadable_parquet(tmp_path):
    expect_error(write_csv(tmp_path / "d.parquet", "not parquet"), "Parquet")


# --- column and row errors ---------------------------------------------------------------------


def test_misnamed_column_lists_columns_and_suggests(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"promt": "a", "response": "b"}])
    expect_error(path, "line 1", "field 'prompt'", "'promt', 'response'", "did you mean 'promt'")


def test_misnamed_column_csv(tmp_path):
    path = write_csv(tmp_path / "d.csv", "prompt,respnse\na,b\n")
    expect_error(path, "row 1 (line 2)", "field 'response'", "did you mean 'respnse'")


def test_no_known_columns(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "a", "output": "b"}])
    msg = expect_error(path, "line 1", "field 'prompt'", "'instruction', 'output'")
    assert "did you mean" not in msg


def test_column_missing_in_later_row(tmp_path):
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "a", "response": "b"}, {"prompt": "a"}]
    expect_error(write_jsonl(tmp_path / "d.jsonl", rows), "line 3", "field 'response'", "not found")


def test_missing_meta_column(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "response": "b", "tsk": 1}])
    expect_error(path, "line 1", "field 'task'", "did you mean 'tsk'", meta_columns=["task"])


@pytest.mark.parametrize(
    "row, field, problem",
    [
        ({"prompt": "", "response": "b"}, "prompt", "is empty"),
        ({"prompt": "  \n", "response": "b"}, "prompt", "is empty"),
        ({"prompt": "a", "response": None}, "response", "null"),
        ({"prompt": 5, "response": "b"}, "prompt", "must be a string, got int"),
        ({"prompt": "a", "response": ["b"]}, "response", "got list"),
    ],
)
def test_bad_prompt_or_response(tmp_path, row, field, problem):
    rows = [{"prompt": "ok", "response": "ok"}, row]
    expect_error(write_jsonl(tmp_path / "d.jsonl", rows), "line 2", f"field '{field}'", problem)


def test_empty_response_in_csv_names_data_row(tmp_path):
    path = write_csv(tmp_path / "d.csv", "prompt,response\na,b\nc,d\ne,\n")
    expect_error(path, "row 3 (line 4)", "field 'response'", "is empty")


def test_null_in_parquet(tmp_path):
    rows = [{"prompt": "a", "response": "b"}, {"prompt": None, "response": "b"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    expect_error(tmp_path / "d.parquet", "row 2", "field 'prompt'", "null")


USER = {"role": "user", "content": "hi"}
BOT = {"role": "assistant", "content": "yo"}


@pytest.mark.parametrize(
    "messages, problem",
    [
        ("just text", "not valid JSON"),
        ({"role": "user"}, "non-empty list"),
        ([], "non-empty list"),
        ([USER, "oops"], "message 2 is not an object"),
        ([{"role": "bot", "content": "x"}, BOT], "message 1 has unknown role 'bot'"),
        ([USER, {"role": "assistant", "content": ""}], "message 2 (assistant) has empty"),
        ([USER, {"role": "assistant", "content": 3}], "non-string content"),
        ([BOT, USER], "last message must be from the assistant, got 'user'"),
        ([{"role": "system", "content": "s"}, BOT], "at least one user message"),
    ],
)
def test_malformed_messages(tmp_path, messages, problem):
    rows = [{"messages": [USER, BOT]}, {"messages": messages}]
    expect_error(write_jsonl(tmp_path / "d.jsonl", rows), "line 2", "field 'messages'", problem)


def test_malformed_messages_json_text_in_csv(tmp_path):
    path = write_csv(tmp_path / "d.csv", 'messages\n"[{""role"": ""user""}"\n')
    expect_error(path, "row 1 (line 2)", "field 'messages'", "not valid JSON")


def test_system_column_with_autodetected_messages(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [USER, BOT]}])
    expect_error(path, "system_column 'sys'", system_column="sys")


# --- hub ---------------------------------------------------------------------------------------


def test_hub_offline_is_one_line(monkeypatch):
    import datasets

    def offline(name, split):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub\n(LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ImmuneLMError) as info:
        load_examples(DataSourceConfig(hub="org/set", split="test"))
    msg = str(info.value)
    assert msg.startswith("could not load hub dataset 'org/set' split 'test' (offline?): ConnectionError")
    assert "\n" not in msg


def test_hub_rows_are_validated(monkeypatch):
    import datasets

    data = datasets.Dataset.from_list([{"prompt": "a", "response": "b"}, {"prompt": "c", "response": ""}])
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: data)
    with pytest.raises(ImmuneLMError, match=r"hub:org/set\[train\]: row 2: field 'response': is empty"):
        load_examples(DataSourceConfig(hub="org/set"))
    data = datasets.Dataset.from_list([{"prompt": "a", "response": "b"}])
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: data)
    assert load_examples(DataSourceConfig(hub="org/set"))[0].messages == Example.pair("a", "b").messages
