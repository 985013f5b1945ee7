"""Row-level validation: turn one raw table row into an :class:`Example`, or say exactly why not.

Every error is a one-line :class:`ImmuneLMError` shaped ``<file>: <where>: field '<name>':
<problem>`` so a user can jump straight to the offending cell. ``where`` is chosen by the
reader: ``line N`` for JSONL (the physical line), ``row N (line M)`` for CSV (1-based data row
plus the line it starts on), ``row N`` for JSON arrays, Parquet files and hub datasets.

Decisions (kept here because they change what a file may contain):

* A prompt/response/message content that is empty *or whitespace-only* is rejected: training
  on it teaches nothing and usually means a broken export.
* ``system_column`` is optional per row: a null/empty cell means "no system message".
* A ``messages`` cell may be a list of ``{role, content}`` objects, or (CSV, where cells are
  text) a JSON string encoding that list. Keys other than role/content are ignored, so Parquet
  structs with extra nullable fields load fine.
* A conversation needs at least one user message and must end with the assistant message
  (the response that training learns and evaluation scores).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from immunelm.data.examples import ROLES, Example
from immunelm.errors import ImmuneLMError

Mode = Literal["pair", "messages"]
DEFAULT_MESSAGES_COLUMN = "messages"


@dataclass(frozen=True)
class ColumnSpec:
    """Which columns hold what, resolved once per dataset (see :func:`choose_columns`)."""

    mode: Mode
    prompt: str = "prompt"
    response: str | None = "response"
    messages: str = DEFAULT_MESSAGES_COLUMN
    system: str | None = None
    meta: Sequence[str] = field(default_factory=tuple)


def row_error(source: str, where: str, column: str, problem: str) -> ImmuneLMError:
    """The one error shape for a bad cell, so every message reads the same way."""
    return ImmuneLMError(f"{source}: {where}: field '{column}': {problem}")


def missing_column_error(source: str, where: str, column: str, present: Sequence[str]) -> ImmuneLMError:
    """Name the missing column, list what exists, and guess the intended name (typos are common)."""
    shown = ", ".join(repr(c) for c in present) if present else "none"
    close = difflib.get_close_matches(column, [str(c) for c in present], n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return row_error(source, where, column, f"column not found (columns: {shown}){hint}")


def decode_utf8(source: str, data: bytes) -> str:
    """Decode a whole text file, pointing at the first invalid byte (line, column, offset).

    ``line`` and ``column`` are 1-based and count characters; the byte offset is 0-based.

    A leading UTF-8 byte-order mark is accepted and dropped (spreadsheet exports add one).
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        start = exc.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data.count(b"\n", 0, start) + 1
        line_start = data.rfind(b"\n", 0, start) + 1
        # Column in characters (as editors show it); the bytes before the bad one are valid.
        column = len(data[line_start:start].decode("utf-8-sig")) + 1
        raise ImmuneLMError(
            f"{source}: line {line}: not valid UTF-8: byte 0x{data[start]:02x} at column {column} "
            f"(byte offset {start}); re-save the file as UTF-8"
        ) from exc


def choose_columns(
    source: str,
    where: str,
    columns: Sequence[str],
    *,
    prompt: str,
    response: str | None,
    messages: str | None,
    system: str | None,
    meta: Sequence[str],
) -> ColumnSpec:
    """Pick prompt/response or messages mode from the first row's columns.

    An explicit ``messages`` column wins; otherwise prompt/response mode is used whenever
    either of those columns exists (so a typo in the other one gets a precise error), and a
    column literally named ``messages`` is used only when both are absent.
    """
    if messages is None and (prompt in columns or response in columns):
        return ColumnSpec("pair", prompt=prompt, response=response, system=system, meta=tuple(meta))
    if messages is None and DEFAULT_MESSAGES_COLUMN not in columns:
        raise missing_column_error(source, where, prompt, columns)
    if system is not None:
        raise ImmuneLMError(
            f"{source}: system_column '{system}' applies only to prompt/response data; "
            "put the system message inside the messages list instead"
        )
    return ColumnSpec("messages", messages=messages or DEFAULT_MESSAGES_COLUMN, meta=tuple(meta))


def _cell(source: str, where: str, row: dict[str, Any], column: str) -> Any:
    """The raw value of ``column``, or a missing-column error listing this row's columns."""
    if column not in row:
        raise missing_column_error(source, where, column, list(row))
    return row[column]


def _text(source: str, where: str, column: str, value: Any) -> str:
    """A required non-blank string cell."""
    if value is None:
        raise row_error(source, where, column, "is empty (null)")
    if not isinstance(value, str):
        raise row_error(source, where, column, f"must be a string, got {type(value).__name__} {value!r:.40}")
    if not value.strip():
        raise row_error(source, where, column, "is empty")
    return value


def _messages(source: str, where: str, column: str, value: Any) -> tuple[dict[str, str], ...]:
    """Validate a chat list: known roles, non-blank contents, a user turn, assistant last."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise row_error(source, where, column, f"not a list and not valid JSON text ({exc.msg})") from exc
        except RecursionError as exc:
            raise row_error(source, where, column, "JSON text nested too deeply") from exc
    if hasattr(value, "tolist") and not isinstance(value, (list, dict)):
        value = value.tolist()  # numpy arrays from pandas-backed sources
    if not isinstance(value, list) or not value:
        problem = f"must be a non-empty list of {{role, content}}, got {value!r:.60}"
        raise row_error(source, where, column, problem)
    out: list[dict[str, str]] = []
    for i, msg in enumerate(value, start=1):
        at = f"message {i}"
        if not isinstance(msg, dict):
            raise row_error(source, where, column, f"{at} is not an object with role/content")
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            problem = f"{at} has unknown role {role!r} (expected one of {', '.join(ROLES)})"
            raise row_error(source, where, column, problem)
        if not isinstance(content, str) or not content.strip():
            raise row_error(source, where, column, f"{at} ({role}) has empty or non-string content")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "assistant":
        problem = f"last message must be from the assistant, got '{out[-1]['role']}'"
        raise row_error(source, where, column, problem)
    if not any(m["role"] == "user" for m in out[:-1]):
        problem = "needs at least one user message before the assistant response"
        raise row_error(source, where, column, problem)
    return tuple(out)


def row_to_example(source: str, where: str, row: dict[str, Any], spec: ColumnSpec) -> Example:
    """Build the :class:`Example` for one row; raise a located error for any bad cell."""
    meta = {column: _cell(source, where, row, column) for column in spec.meta}
    if spec.mode == "messages":
        value = _cell(source, where, row, spec.messages)
        return Example(_messages(source, where, spec.messages, value), meta)
    # Built directly, not via Example.pair(**meta): a meta column may be named "prompt".
    messages: list[dict[str, str]] = []
    if spec.system is not None:
        system = _cell(source, where, row, spec.system)
        if system is not None and system != "":  # no system message for this row
            messages.append({"role": "system", "content": _text(source, where, spec.system, system)})
    prompt = _text(source, where, spec.prompt, _cell(source, where, row, spec.prompt))
    # response_column=None reads a prompt-only set (harmful prompts without reference answers):
    # the empty response means "no reference", and only evaluation sets accept it.
    response = "" if spec.response is None else _text(source, where, spec.response, _cell(source, where, row, spec.response))
    messages.append({"role": "user", "content": prompt})
    messages.append({"role": "assistant", "content": response})
    return Example(tuple(messages), meta)
