"""``immunelm evaluate`` and ``immunelm report``: models, suites, tasks, judges and results files.

Every case must fail in ``validate_evaluation`` (or ``load_report``), before a run directory,
a cache or a model exists: the organism overrides are tiny only so that a case that slips
through fails fast on the patched engine instead of building the real organism.
"""

import json

from bad_inputs.framework import CACHE, TINY_ORGANISM, BadInput

REF = "ref=organism:aligned"
# The pretrain warm-up (50 steps) must fit the tiny budget (8 steps) since warm-up <= budget is checked.
TINY = [*TINY_ORGANISM, "organism.pretrain.warmup_steps=2"]
EV = ["evaluate", "--run-dir", "run", CACHE, *TINY]
CONFIG_JSON = json.dumps({"model_type": "llama"})
PAIRS = "".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(4))


def ev(case_id: str, models: list[str], extra: list[str], expect: list[str], files=None, setup=None) -> BadInput:
    """``immunelm evaluate -m ... <overrides>``."""
    flags = [arg for m in models for arg in ("-m", m)]
    return BadInput(case_id, [*EV[:1], *flags, *EV[1:], *extra], expect, dict(files or {}), setup)


def model(case_id: str, source: str, *expect: str, files=None, setup=None) -> BadInput:
    """The second model's source is bad; the first (valid) one must not be evaluated first."""
    return ev(case_id, [REF, f"mine={source}"], [], ["model 'mine'", *expect], files, setup)


def suite(case_id: str, text: str, *expect: str) -> BadInput:
    return ev(case_id, [REF], ["evaluation.suite=s.yaml"], ["s.yaml", *expect], {"s.yaml": text})


def cfg_models(case_id: str, models: list[dict], *expect: str) -> BadInput:
    return BadInput(case_id, ["evaluate", "-c", "m.yaml", "--run-dir", "run", CACHE, *TINY], list(expect),
                    {"m.yaml": json.dumps({"models": models})})


def task(case_id: str, text: str, *expect: str, files=None) -> BadInput:
    return ev(case_id, [REF], ["evaluation.task=t.yaml"], ["t.yaml", *expect], {"t.yaml": text, **(files or {})})


def report(case_id: str, content: str | None, *expect: str, setup=None) -> BadInput:
    files = {"r/results.json": content} if content is not None else {}
    return BadInput(case_id, ["report", "r"], ["results.json", *expect], files, setup)


def _sparse_results(root, size=256 * 1024 * 1024 + 1):
    (root / "r").mkdir(exist_ok=True)
    with open(root / "r" / "results.json", "wb") as fh:  # sparse: takes no disk space
        fh.truncate(size)


def _pickle_dir(name: str, extra: dict | None = None) -> dict:
    return {f"{name}/config.json": CONFIG_JSON, f"{name}/pytorch_model.bin": b"\x80\x04not really", **(extra or {})}


ADV = "name: s\nbudget: 10\neval_at: [0, 10]\nadversaries:\n"
TASK_OK_SETS = "harmful: {path: h.jsonl}\nutility:\n  - {name: u, data: {path: h.jsonl}}\nattack: {harmful: {path: h.jsonl}}\n"

CASES = [
    # ------------------------------------------------------------------ models
    model("eval-model-missing-path", "./nope/model", "nope/model", "no such model directory"),
    model("eval-model-unknown-organism-stage", "organism:algned", "unknown organism stage 'algned'", "organism:aligned"),
    model("eval-model-unknown-smol-stage", "smol:tuned", "unknown smol stage 'tuned'", "smol:released"),
    model("eval-model-file-not-a-model", "weights.txt", "weights.txt", "expected a model directory or a .gguf file",
          files={"weights.txt": "hello"}),
    model("eval-model-fake-gguf", "fake.gguf", "fake.gguf", "not a GGUF file", files={"fake.gguf": "not gguf at all"}),
    model("eval-model-pickle-only-dir", "pkl", "only pickle weights", "never unpickles", files=_pickle_dir("pkl")),
    model("eval-model-dir-without-config", "empty", "not a Hugging Face model directory (no config.json)",
          setup=lambda root: (root / "empty").mkdir()),
    model("eval-model-corrupt-safetensors", "st", "model.safetensors", "not a readable safetensors file",
          files={"st/config.json": CONFIG_JSON, "st/model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage"}),
    model("eval-model-hub-name-offline", "some-org/some-model", "HF_HUB_OFFLINE", "pass a local model directory",
          "huggingface-cli download"),
    model("eval-model-adapter-without-note", "adp", "immunelm_adapter.json", files={"adp/adapter_config.json": "{}"}),
    model("eval-model-adapter-base-missing", "adp", "nowhere/base", "no such model directory",
          files={"adp/adapter_config.json": "{}", "adp/immunelm_adapter.json": json.dumps({"base": "./nowhere/base"})}),
    ev("eval-model-duplicate-names", ["a=organism:aligned", "a=organism:base"], [], ["duplicate name(s) a"]),
    ev("eval-model-flag-without-equals", ["organism:aligned"], [], ["--model 'organism:aligned'", "NAME=SOURCE"]),
    ev("eval-model-flag-empty-name", ["=organism:aligned"], [], ["NAME=SOURCE"]),
    ev("eval-model-list-empty", [], ["models=[]"], ["models: the list is empty"]),
    cfg_models("eval-model-name-whitespace", [{"name": "  ", "source": "organism:aligned", "role": "reference"}],
               "models[0].name", "empty"),
    cfg_models("eval-model-source-empty", [{"name": "a", "source": "", "role": "reference"}], "models[0].source", "empty"),
    cfg_models("eval-model-role-unknown", [{"name": "a", "source": "organism:aligned", "role": "attacker"}],
               "models.0.role", "'reference', 'defended' or 'base'"),
    cfg_models("eval-model-two-references", [{"name": "a", "source": "organism:aligned", "role": "reference"},
                                             {"name": "b", "source": "organism:base", "role": "reference"}],
               "2 models have role 'reference' (a, b)"),
    # ------------------------------------------------------------------ suites
    suite("eval-suite-invalid-yaml", ADV + "  - name: [a\n", "invalid YAML at line"),
    suite("eval-suite-adversary-is-string", ADV + "  - sft-adamw\n", "adversaries[0]", "expected a mapping", "got string"),
    suite("eval-suite-adversary-is-list", ADV + "  - [a, b]\n", "adversaries[0]", "expected a mapping", "got list"),
    suite("eval-suite-adversaries-not-list", "name: s\nadversaries: {a: 1}\n", "'adversaries' must be a list", "got mapping"),
    suite("eval-suite-adversaries-missing", "name: s\n", "'adversaries' must be a list", "got nothing"),
    suite("eval-suite-adversaries-empty", "name: s\nadversaries: []\n", "'adversaries' is empty"),
    suite("eval-suite-top-level-list", "- a\n- b\n", "expected a mapping", "got list"),
    suite("eval-suite-defaults-not-mapping", "name: s\ndefaults: [1]\nadversaries:\n  - name: a\n",
          "'defaults' must be a mapping", "got list"),
    suite("eval-suite-train-not-mapping", ADV + "  - {name: a, train: fast}\n", "adversaries[0] 'a'", "'train' must be a mapping"),
    suite("eval-suite-unknown-kind", ADV + "  - {name: a}\n  - {name: b, kind: harmful-sft}\n",
          "adversaries[1] 'b'", "unknown attack kind 'harmful-sft'", "did you mean 'harmful_sft'"),
    suite("eval-suite-search-unknown-kind", ADV + "  - {name: a}\nsearch: {trials: 2, kinds: [jailbreak]}\n",
          "search.kinds", "unknown attack kind 'jailbreak'"),
    suite("eval-suite-identical-adam-adamw", ADV + "  - {name: a, train: {optimizer: adam}}\n"
          "  - {name: b, train: {optimizer: adamw, weight_decay: 0}}\n", "'a' and 'b' are the same attack"),
    suite("eval-suite-identical-after-defaults", "name: s\nbudget: 10\neval_at: [0, 10]\ndefaults: {train: {lr: 1.0e-3}}\n"
          "adversaries:\n  - {name: a}\n  - {name: b, train: {lr: 0.001, log_every: 5}}\n", "'a' and 'b' are the same attack"),
    suite("eval-suite-duplicate-names", ADV + "  - {name: a}\n  - {name: a, train: {lr: 1.0e-3}}\n",
          "adversaries[0] and adversaries[1] are both named 'a'"),
    suite("eval-suite-eval-at-beyond-budget", "name: s\nbudget: 10\neval_at: [0, 50]\nadversaries:\n  - {name: a}\n",
          "eval_at step 50", "[0, 10]"),
    suite("eval-suite-eval-at-negative", "name: s\nbudget: 10\neval_at: [-5, 10]\nadversaries:\n  - {name: a}\n",
          "eval_at", "greater than or equal to 0"),
    suite("eval-suite-adversary-lr-infinite", ADV + "  - {name: a, train: {lr: .inf}}\n", "adversaries[0] 'a'", "train.lr",
          "finite"),
    suite("eval-suite-adversary-unknown-field", ADV + "  - {name: a, exampels: 10}\n", "adversaries[0] 'a'",
          "unknown field 'exampels'", "did you mean 'examples'"),
    suite("eval-suite-adversary-name-missing", ADV + "  - {kind: harmful_sft}\n", "adversaries[0]", "missing 'name'"),
    suite("eval-suite-adversary-name-number", ADV + "  - {name: 3}\n", "adversaries[0]", "non-empty string"),
    ev("eval-suite-search-trials-without-search", [REF], ["evaluation.suite=quick", "evaluation.search_trials=5"],
       ["evaluation.search_trials=5", "suite 'quick' has no 'search' section"]),
    ev("eval-suite-unknown-name", [REF], ["evaluation.suite=stnadard"], ["unknown suite 'stnadard'", "standard"]),
    ev("eval-suite-file-missing", [REF], ["evaluation.suite=nope.yaml"], ["nope.yaml", "suite file not found"]),
    # ------------------------------------------------------------------ tasks
    ev("eval-task-unknown-name", [REF], ["evaluation.task=wrld"], ["unknown task 'wrld'", "did you mean 'world'"]),
    ev("eval-task-file-missing", [REF], ["evaluation.task=nope.yaml"], ["nope.yaml", "task file not found"]),
    task("eval-task-invalid-yaml", "harmful: {path: [x\n", "invalid YAML at line"),
    task("eval-task-missing-harmful-set", "utility:\n  - {name: u, data: {path: h.jsonl}}\n", "needs set(s) harmful",
         files={"h.jsonl": PAIRS}),
    task("eval-task-missing-attack-pool", "harmful: {path: h.jsonl}\nutility:\n  - {name: u, data: {path: h.jsonl}}\n",
         "attack.harmful", files={"h.jsonl": PAIRS}),
    ev("eval-task-data-missing-column", [REF], ["evaluation.task=t.yaml"], ["h.jsonl", "question"],
       {"t.yaml": TASK_OK_SETS.replace("harmful: {path: h.jsonl}\n", "harmful: {path: h.jsonl, prompt_column: question}\n", 1),
        "h.jsonl": PAIRS}),
    ev("eval-task-data-file-missing", [REF], ["evaluation.task=t.yaml"], ["gone.jsonl", "not found"],
       {"t.yaml": TASK_OK_SETS.replace("harmful: {path: h.jsonl}", "harmful: {path: gone.jsonl}", 1), "h.jsonl": PAIRS}),
    ev("eval-task-unknown-provider", [REF], ["evaluation.task=t.yaml"], ["unknown task provider 'wrld'"],
       {"t.yaml": "provider: wrld\n"}),
    # ------------------------------------------------------------------ judges
    ev("eval-judge-unknown", [REF], ["evaluation.judge=gpt4"], ["unknown judge 'gpt4'", "keyword"]),
    ev("eval-judge-option-typo", [REF], ["evaluation.judge=keyword", "evaluation.judge_options={presetz: [gcg]}"],
       ["judge 'keyword'", "presetz"]),
    ev("eval-judge-classifier-without-path", [REF], ["evaluation.judge=classifier"], ["classifier judge", "set path"]),
    ev("eval-judge-classifier-missing-dir", [REF], ["evaluation.judge=classifier", "evaluation.judge_options={path: clf}"],
       ["clf", "directory not found"]),
    ev("eval-judge-classifier-pickle-only", [REF], ["evaluation.judge=classifier", "evaluation.judge_options={path: clf}"],
       ["clf", "only pickle weights", "never unpickles"], _pickle_dir("clf")),
    ev("eval-judge-rubric-pickle-only", [REF], ["evaluation.judge=rubric", "evaluation.judge_options={path: grader}"],
       ["grader", "only pickle weights"], _pickle_dir("grader")),
    # ------------------------------------------------------------------ reports
    BadInput("report-missing", ["report", "nowhere"], ["nowhere/results.json", "not found"]),
    report("report-not-json", "{not json", "not valid JSON", "line 1"),
    report("report-not-an-object", "[1, 2]", "JSON object"),
    report("report-deeply-nested", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    report("report-huge", None, "too large for a results file", setup=_sparse_results),
    report("report-no-schema-version", "{}", "missing field 'schema_version'"),
    report("report-future-schema-version", json.dumps({"schema_version": "9.0"}), "schema_version '9.0' is not supported"),
    report("report-missing-field", json.dumps({"schema_version": "1.3", "suite": "quick"}), "missing field"),
    report("report-not-utf8", None, "not UTF-8",
           setup=lambda root: ((root / "r").mkdir(), (root / "r" / "results.json").write_bytes(b'{"a": "caf\xe9"}'))),
]
