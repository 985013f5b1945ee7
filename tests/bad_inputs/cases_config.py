"""Config files and key=value overrides: syntax, unknown keys, types and numeric bounds."""

from bad_inputs.framework import CACHE, PAIRS, BadInput

FT = ["finetune", "--run-dir", "run", CACHE, "data.path=pairs.jsonl", "train.progress=false"]
DATA = {"pairs.jsonl": PAIRS}


def ft(case_id: str, override: str, *expect: str) -> BadInput:
    return BadInput(case_id, [*FT, override], list(expect), dict(DATA))


CASES = [
    BadInput("config-missing", [*FT, "-c", "nope.yaml"], ["nope.yaml", "not found"], dict(DATA)),
    BadInput("config-is-directory", [*FT, "-c", "adir"], ["adir", "directory"], dict(DATA), setup=lambda r: (r / "adir").mkdir()),
    BadInput("config-invalid-yaml", [*FT, "-c", "bad.yaml"], ["bad.yaml", "invalid YAML at line 3"],
             {**DATA, "bad.yaml": "train:\n  lr: [1, 2\n"}),
    BadInput("config-not-utf8", [*FT, "-c", "latin.yaml"], ["latin.yaml", "not UTF-8"], {**DATA, "latin.yaml": b"train:\n  lr: 1e-4 # caf\xe9\n"}),
    BadInput("config-top-level-list", [*FT, "-c", "list.yaml"], ["list.yaml", "mapping"], {**DATA, "list.yaml": "- 1\n- 2\n"}),
    BadInput("config-deeply-nested", [*FT, "-c", "deep.yaml"], ["deep.yaml"], {**DATA, "deep.yaml": "a: " + "[" * 5000 + "]" * 5000 + "\n"}),
    ft("override-unknown-key", "train.lrr=1e-4", "train.lrr", "did you mean 'train.lr'"),
    ft("override-no-equals", "trainlr", "trainlr", "key=value"),
    ft("override-empty-key", "=3", "key before '='"),
    ft("override-section-not-mapping", "train=3", "'train'"),
    ft("lr-infinite", "train.lr=.inf", "train.lr", "finite"),
    ft("lr-nan", "train.lr=.nan", "train.lr", "finite"),
    ft("lr-negative", "train.lr=-1e-4", "train.lr", "greater than 0"),
    ft("lr-not-a-number", "train.lr=fast", "train.lr", "number"),
    ft("max-grad-norm-zero", "train.max_grad_norm=0", "train.max_grad_norm", "greater than 0"),
    ft("max-grad-norm-infinite", "train.max_grad_norm=.inf", "train.max_grad_norm", "finite"),
    ft("beta-above-one", "train.betas=[0.9, 1.5]", "train.betas"),
    ft("beta-negative", "train.betas=[-0.1, 0.999]", "train.betas"),
    ft("batch-size-zero", "train.batch_size=0", "train.batch_size", "greater than or equal to 1"),
    ft("grad-accum-zero", "train.grad_accum=0", "train.grad_accum"),
    ft("momentum-one", "train.momentum=1.0", "train.momentum", "less than 1"),
    ft("nesterov-without-momentum", "train.nesterov=true", "nesterov"),
    ft("max-steps-zero", "train.max_steps=0", "train.max_steps"),
    ft("epochs-negative", "train.epochs=-1", "train.epochs"),
    ft("warmup-negative", "train.warmup_steps=-3", "train.warmup_steps"),
    ft("warmup-beyond-budget", "train.warmup_steps=500", "warmup_steps", "max_steps"),
    ft("min-lr-ratio-above-one", "train.min_lr_ratio=2", "train.min_lr_ratio"),
    ft("weight-decay-negative", "train.weight_decay=-0.1", "train.weight_decay"),
    ft("weight-decay-nan", "train.weight_decay=.nan", "train.weight_decay", "finite"),
    ft("optimizer-unknown", "train.optimizer=lion", "train.optimizer", "adamw"),
    ft("schedule-unknown", "train.schedule=step", "train.schedule", "cosine"),
    ft("lora-rank-zero", "train.lora={r: 0}", "train.lora.r"),
    ft("lora-dropout-one", "train.lora={dropout: 1.0}", "train.lora.dropout"),
    ft("lora-alpha-infinite", "train.lora={alpha: .inf}", "train.lora.alpha", "finite"),
    ft("max-length-tiny", "max_length=2", "max_length"),
    ft("log-every-zero", "train.log_every=0", "train.log_every"),
    ft("eval-at-negative", "train.eval_at=[-1]", "train.eval_at"),
    ft("organism-seed-text", "organism.world.seed=abc", "organism.world.seed"),
    BadInput("immunise-defence-lr-infinite", ["immunise", "deep-align", "--run-dir", "run", CACHE, "defence.train.lr=.inf"],
             ["defence.train.lr", "finite"]),
    BadInput("world-build-pretrain-lr-nan", ["world", "build", CACHE, "organism.pretrain.lr=.nan"], ["organism.pretrain.lr", "finite"]),
    BadInput("lox-alpha-infinite", ["immunise", "lox", "--run-dir", "run", CACHE, "defence.alpha=.inf"], ["defence.alpha", "finite"]),
    BadInput("et-with-lora", ["immunise", "et", "--run-dir", "run", CACHE, "defence.train.lora={r: 2}"], ["defence.train", "lora must be unset"]),
    BadInput("ilu-base-train-ignored", ["immunise", "ilu", "--run-dir", "run", CACHE, "defence.npo.train.lr=1.0"],
             ["defence.npo", "own 'train' section"]),
    BadInput("ilu-unknown-base", ["immunise", "ilu", "--run-dir", "run", CACHE, "defence.base=gd"], ["defence.base", "npo"]),
    BadInput("seam-eps-zero", ["immunise", "seam", "--run-dir", "run", CACHE, "defence.eps=0"], ["defence.eps"]),
    BadInput("tokenbuncher-noise-one", ["immunise", "tokenbuncher", "--run-dir", "run", CACHE, "defence.noise_eps=1.0"],
             ["defence.noise_eps"]),
]
