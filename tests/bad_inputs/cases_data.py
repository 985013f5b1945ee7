"""Data files through ``immunelm data check`` and ``immunelm finetune``: format, columns, encoding."""

from bad_inputs.framework import CACHE, PAIRS, BadInput


def check(case_id: str, name: str, content: str | bytes, *expect: str, extra: tuple[str, ...] = ()) -> BadInput:
    return BadInput(f"datacheck-{case_id}", ["data", "check", name, *extra], [name, *expect], {name: content})


CASES = [
    BadInput("datacheck-missing-file", ["data", "check", "nope.jsonl"], ["nope.jsonl"]),
    BadInput("datacheck-directory", ["data", "check", "adir.jsonl"], ["adir.jsonl", "not a regular file"],
             setup=lambda r: (r / "adir.jsonl").mkdir()),
    check("empty-file", "empty.jsonl", "", "empty"),
    check("invalid-json-line", "bad.jsonl", PAIRS + "{not json}\n", "line 7", "invalid JSON"),
    check("jsonl-array-line", "arr.jsonl", "[1, 2]\n", "line 1", "JSON object"),
    check("missing-response-column", "noresp.jsonl", '{"prompt": "hi", "answer": "x"}\n', "response"),
    check("missing-prompt-column", "noprompt.jsonl", '{"question": "hi", "response": "x"}\n', "prompt"),
    check("blank-prompt", "blank.jsonl", '{"prompt": "   ", "response": "x"}\n', "prompt", "empty"),
    check("number-response", "num.jsonl", '{"prompt": "hi", "response": 3}\n', "response", "string"),
    check("not-utf8", "latin.jsonl", b'{"prompt": "caf\xe9", "response": "x"}\n', "UTF-8"),
    check("deeply-nested-jsonl", "deep.jsonl", '{"prompt": "hi", "response": "x", "m": ' + "[" * 100000 + "]" * 100000 + "}\n",
          "nested too deeply"),
    check("deeply-nested-json", "deep.json", "[" * 100000 + "]" * 100000, "nested too deeply"),
    check("json-object-not-list", "obj.json", '{"prompt": "hi"}', "JSON list"),
    check("json-concatenated", "two.json", '{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "d"}\n', "JSON Lines"),
    check("csv-ragged", "rag.csv", "prompt,response\nhi,x,extra\n", "rag.csv"),
    check("messages-bad-role", "msg.jsonl", '{"messages": [{"role": "wizard", "content": "hi"}]}\n', "role",
          extra=("messages_column=messages",)),
    check("messages-assistant-not-last", "msg2.jsonl",
          '{"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "hi"}]}\n', "assistant",
          extra=("messages_column=messages",)),
    check("unknown-format", "data.txt", "hello\n", "data.txt"),
    BadInput("datacheck-limit-zero", ["data", "check", "ok.jsonl", "limit=0"], ["limit", "greater than or equal to 1"], {"ok.jsonl": PAIRS}),
    BadInput("datacheck-path-and-hub", ["data", "check", "ok.jsonl", "hub=some/dataset"], ["path", "hub"], {"ok.jsonl": PAIRS}),
    BadInput("finetune-answer-cut-by-truncation",
             ["finetune", "--run-dir", "run", CACHE, "data.path=long.jsonl", "max_length=8", "train.progress=false"],
             ["long.jsonl", "example 0", "max_length"],
             {"long.jsonl": '{"prompt": "' + " ".join(["say"] * 40) + '", "response": "ok"}\n'}),
]
