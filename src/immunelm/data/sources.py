"""Load chat examples from local files (JSONL, JSON, CSV, Parquet) or a ``datasets`` hub name.

Every row is checked before anything trains on it; a bad row stops loading with one line
naming the file, the row and the field (see :mod:`immunelm.data.validate`).

File formats and decisions:

* **JSONL** (``.jsonl``/``.ndjson``): one JSON object per line; blank lines are skipped; rows
  are reported by physical line number (``line N``).
* **JSON** (``.json``): a top-level list of objects, or an object with a ``"data"`` list of
  objects (the ``{"version": ..., "data": [...]}`` layout many published sets use; other
  top-level keys are ignored). Rows are the list items, reported as ``row N``.
* **CSV** (``.csv``): a header row then data rows; every cell is text, so a ``messages`` cell
  holds JSON text. Blank lines are skipped; rows are reported as ``row N (line M)``.
* **Parquet** (``.parquet``/``.pq``): read with pyarrow; nested ``messages`` lists load as is.
* Text files must be UTF-8 (a byte-order mark is tolerated).

Column mode (prompt/response vs messages) is decided once from the first row, then every
row must follow it. All rows are validated before ``shuffle_seed``/``limit`` apply, so an error
is reported with the row's original number whatever subset is asked for.
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from pydantic import Field, model_validator

from immunelm.config import Config, Seed
from immunelm.data.examples import Example
from immunelm.data.validate import choose_columns, decode_utf8, row_to_example
from immunelm.errors import ImmuneLMError
from immunelm.io import atomic_path

Row = tuple[str, dict[str, Any]]  # (where, e.g. "line 3" / "row 2 (line 3)", cells by column)
FileFormat = Literal["jsonl", "json", "csv", "parquet"]

EXTENSIONS: dict[str, FileFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


class DataSourceConfig(Config):
    """Where a dataset comes from and which columns hold the conversation."""

    path: str | None = Field(None, description="Local data file (.jsonl, .json, .csv or .parquet).")
    hub: str | None = Field(
        None, description="A `datasets` hub dataset name, e.g. 'org/name'; needs network access."
    )
    world: str | None = Field(
        None, description="A built-in world dataset, e.g. 'attack/compound' (see immunelm.world.datasets)."
    )
    world_seed: Seed = Field(0, description="Seed of the built-in world (with world=...).")
    split: str = Field("train", description="Hub split to load (ignored for local files).")
    format: Literal["auto", "jsonl", "json", "csv", "parquet"] = Field(
        "auto", description="File format; 'auto' picks it from the file extension."
    )
    prompt_column: str = Field("prompt", description="Column with the user prompt.")
    response_column: str | None = Field(
        "response", description="Column with the assistant response; null for a prompt-only evaluation set.")
    messages_column: str | None = Field(
        None,
        description="Column with chat lists of {role, content} (last = assistant response). "
        "If unset, a column named 'messages' is used when prompt/response columns are absent.",
    )
    system_column: str | None = Field(
        None, description="Optional column with a per-row system message (prompt/response data only)."
    )
    meta_columns: list[str] = Field(
        default_factory=list,
        description="Columns copied into each example's meta (never shown to the model).",
    )
    limit: int | None = Field(None, ge=1, description="Keep at most this many examples (after shuffling).")
    shuffle_seed: Seed | None = Field(
        None, description="Shuffle examples with this seed (deterministic); unset keeps file order."
    )

    @model_validator(mode="after")
    def _check(self) -> "DataSourceConfig":
        if sum(x is not None for x in (self.path, self.hub, self.world)) != 1:
            raise ValueError(
                "set exactly one of 'path' (a local file), 'hub' (a hub dataset name) or 'world' (a built-in dataset)"
            )
        if self.prompt_column == self.response_column:
            raise ValueError("prompt_column and response_column must be different columns")
        if self.messages_column is not None and self.system_column is not None:
            raise ValueError("system_column applies only to prompt/response data, not to messages_column")
        return self

    @property
    def label(self) -> str:
        """How errors name this source: the file path, ``hub:name[split]`` or ``world:name``."""
        if self.world is not None:
            return f"world:{self.world}"
        return self.path if self.path is not None else f"hub:{self.hub}[{self.split}]"


def load_examples(source: DataSourceConfig) -> list[Example]:
    """Read, validate and convert every row; then shuffle (if seeded) and truncate (if limited)."""
    if source.world is not None:
        return _subset(_world_examples(source), source)
    rows = _read_hub(source) if source.hub is not None else read_rows(source.label, source.format)
    if not rows:
        raise ImmuneLMError(f"{source.label}: empty dataset (0 rows)")
    where, first = rows[0]
    spec = choose_columns(
        source.label,
        where,
        list(first),
        prompt=source.prompt_column,
        response=source.response_column,
        messages=source.messages_column,
        system=source.system_column,
        meta=source.meta_columns,
    )
    return _subset([row_to_example(source.label, w, data, spec) for w, data in rows], source)


def _subset(examples: list[Example], source: DataSourceConfig) -> list[Example]:
    if source.shuffle_seed is not None:
        random.Random(source.shuffle_seed).shuffle(examples)
    return examples[: source.limit] if source.limit is not None else examples


def _world_examples(source: DataSourceConfig) -> list[Example]:
    # Imported here: the world depends on the data layer, not the other way round.
    from immunelm.world.datasets import world_dataset
    from immunelm.world.spec import WorldConfig, generate_world

    return world_dataset(generate_world(WorldConfig(seed=source.world_seed)), source.world)


def detect_format(path: str, fmt: str = "auto") -> FileFormat:
    """The explicit ``fmt``, or the one implied by the extension (case-insensitive)."""
    if fmt != "auto":
        if fmt not in EXTENSIONS.values():
            raise ImmuneLMError(f"{path}: unknown format '{fmt}' (expected jsonl, json, csv or parquet)")
        return fmt  # type: ignore[return-value]
    suffix = Path(path).suffix.lower()
    if suffix not in EXTENSIONS:
        known = ", ".join(EXTENSIONS)
        raise ImmuneLMError(
            f"{path}: unknown file extension '{suffix or '(none)'}' (expected one of {known}); "
            "rename the file or set format=jsonl|json|csv|parquet"
        )
    return EXTENSIONS[suffix]


def read_rows(path: str, fmt: str = "auto") -> list[Row]:
    """Raw rows of a local file with their locations; no column checks yet."""
    kind = detect_format(path, fmt)
    file = Path(path)
    if not file.exists():
        raise ImmuneLMError(f"{path}: file not found")
    if not file.is_file():
        raise ImmuneLMError(f"{path}: not a regular file (a directory?)")
    if kind == "parquet":
        return _read_parquet(file, path)
    size = file.stat().st_size
    if size > MAX_TEXT_BYTES:
        raise ImmuneLMError(f"{path}: {size / 2**30:.1f} GiB is too large to read as {kind} text "
                            f"(limit {MAX_TEXT_BYTES / 2**30:.0f} GiB); convert it to Parquet or split it")
    text = decode_utf8(path, file.read_bytes())
    readers = {"jsonl": _parse_jsonl, "json": _parse_json, "csv": _parse_csv}
    return readers[kind](text, path)


#: Text formats are read whole into memory; beyond this a user needs Parquet or a split file.
MAX_TEXT_BYTES = 2 * 2**30


def _parse_jsonl(text: str, source: str) -> list[Row]:
    rows: list[Row] = []
    # split("\n"), not splitlines(): JSON strings may legally hold U+2028 and friends.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problem = f"invalid JSON: {exc.msg} at column {exc.colno}"
            raise ImmuneLMError(f"{source}: line {lineno}: {problem}") from exc
        except RecursionError as exc:
            raise ImmuneLMError(f"{source}: line {lineno}: JSON nested too deeply") from exc
        if not isinstance(obj, dict):
            raise ImmuneLMError(f"{source}: line {lineno}: expected a JSON object, got {type(obj).__name__}")
        rows.append((f"line {lineno}", obj))
    return rows


def _parse_json(text: str, source: str) -> list[Row]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = ""
        if exc.msg == "Extra data":  # a second value after the first: one object per line
            hint = "; this looks like JSON Lines: use a .jsonl name or format=jsonl"
        raise ImmuneLMError(
            f"{source}: line {exc.lineno}: invalid JSON: {exc.msg} at column {exc.colno}{hint}"
        ) from exc
    except RecursionError as exc:
        raise ImmuneLMError(f"{source}: JSON nested too deeply") from exc
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        got = f"an object with keys {sorted(data)[:5]}" if isinstance(data, dict) else type(data).__name__
        raise ImmuneLMError(f'{source}: expected a JSON list of objects (or {{"data": [...]}}), got {got}')
    rows: list[Row] = []
    for i, obj in enumerate(data, start=1):
        if not isinstance(obj, dict):
            raise ImmuneLMError(f"{source}: row {i}: expected a JSON object, got {type(obj).__name__}")
        rows.append((f"row {i}", obj))
    return rows


def _parse_csv(text: str, source: str) -> list[Row]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return []
        _check_header(header, source)
        rows: list[Row] = []
        start = reader.line_num + 1
        for cells in reader:
            if cells:
                where = f"row {len(rows) + 1} (line {start})"
                if len(cells) != len(header):
                    raise ImmuneLMError(
                        f"{source}: {where}: has {len(cells)} fields but the header has {len(header)}"
                    )
                rows.append((where, dict(zip(header, cells))))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise ImmuneLMError(f"{source}: line {reader.line_num}: malformed CSV: {exc}") from exc
    return rows


def _check_header(header: Sequence[str], source: str) -> None:
    """Duplicate names would silently shadow each other in a row dict."""
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise ImmuneLMError(f"{source}: line 1: duplicate column '{name}' in the CSV header")
        seen.add(name)


def _read_parquet(file: Path, source: str) -> list[Row]:
    import pyarrow as pa  # lazy: pyarrow is heavy and only Parquet needs it
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(file)
    except (pa.ArrowException, OSError) as exc:
        raise ImmuneLMError(f"{source}: not a readable Parquet file: {exc}") from exc
    return [(f"row {i}", row) for i, row in enumerate(table.to_pylist(), start=1)]


def _read_hub(source: DataSourceConfig) -> list[Row]:
    """Rows of a hub split; any failure (no network, unknown name/split) becomes one line."""
    try:
        import datasets  # lazy: importing datasets costs seconds

        dataset = datasets.load_dataset(source.hub, split=source.split)
        records: Iterable[dict[str, Any]] = iter(dataset)
        return [(f"row {i}", dict(r)) for i, r in enumerate(records, start=1)]
    except Exception as exc:  # noqa: BLE001 - datasets raises many unrelated types offline
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise ImmuneLMError(
            f"could not load hub dataset '{source.hub}' split '{source.split}' (offline?): {detail[:300]}"
        ) from exc


def save_examples_jsonl(examples: Sequence[Example], path: str | Path) -> Path:
    """Write ``{"messages": [...], **meta}`` per line, atomically (complete file or none).

    Meta keys become top-level columns so the file stays flat and readable by other tools;
    read it back with ``DataSourceConfig(path=..., meta_columns=[...])`` (add
    ``messages_column="messages"`` if a meta key is named like the prompt/response column).
    Meta values that are not JSON types are written as strings.
    """
    lines = []
    for i, example in enumerate(examples, start=1):
        if "messages" in example.meta:
            raise ImmuneLMError(f"{path}: example {i}: meta key 'messages' would overwrite the conversation")
        record = {"messages": [dict(m) for m in example.messages], **example.meta}
        lines.append(json.dumps(record, ensure_ascii=False, default=str) + "\n")
    with atomic_path(path) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8", newline="\n")
    return Path(path)


def describe_examples(examples: Sequence[Example]) -> dict[str, Any]:
    """Summary numbers for ``immunelm data check``: sizes in characters, rounded to 0.1.

    Prompt length is the last user message (what :attr:`Example.prompt` returns), not the
    whole conversation, so multi-turn data is comparable with prompt/response data.
    """
    n = len(examples)
    prompts = [len(e.prompt) for e in examples]
    responses = [len(e.response) for e in examples]
    return {
        "rows": n,
        "mean_prompt_chars": round(sum(prompts) / n, 1) if n else 0.0,
        "mean_response_chars": round(sum(responses) / n, 1) if n else 0.0,
        "max_prompt_chars": max(prompts, default=0),
        "max_response_chars": max(responses, default=0),
        "with_system": sum(1 for e in examples if e.messages[0]["role"] == "system"),
        "multi_turn": sum(1 for e in examples if sum(m["role"] == "user" for m in e.messages) > 1),
    }
