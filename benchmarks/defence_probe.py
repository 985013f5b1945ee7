"""Probe a defence's settings on the organism: immunise the aligned organism with each given
config and read benign accuracy, refusal of held-out harmful prompts and hazard accuracy (exact,
no attack), plus the defence's last logged training row. For choosing organism-scale defaults.

    python benchmarks/defence_probe.py --label tokenbuncher-lr \\
        'tokenbuncher:{"train": {"lr": 1e-4, "max_steps": 100}}' 'tokenbuncher:{"train": {"lr": 3e-5, "max_steps": 100}}'

Writes benchmarks/results/defence_probe_<label>.json.
"""

from __future__ import annotations

import argparse
import json

from common import save_result

from immunelm.api.immunise import load_defence_config, world_defence_data
from immunelm.defences import apply_defence
from immunelm.world.measure import score_items
from immunelm.world.organism import Organism, OrganismConfig
from immunelm.world.spec import BENIGN_TASKS


def scores(model, tokenizer, world) -> dict[str, float]:
    benign = [i for t in BENIGN_TASKS for i in world.by_task(t)]
    harmful = score_items(model, tokenizer, world.by_task("compound", "eval"), world.train_phrasings)
    return {"benign_accuracy": score_items(model, tokenizer, benign, world.train_phrasings)["accuracy"],
            "harmful_refusal": harmful["refusal"], "hazard_accuracy": harmful["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("specs", nargs="+", help="NAME:JSON_CONFIG, e.g. seam:{} or 'ctrap:{\"lam\": 1}'.")
    parser.add_argument("--label", required=True)
    args = parser.parse_args()
    organism = Organism()
    organism.build()
    data = world_defence_data(OrganismConfig())
    rows = []
    for spec in args.specs:
        name, fields = spec.split(":", 1)
        config = json.loads(fields)
        config.setdefault("train", {})["progress"] = False
        model, tokenizer = organism.load("aligned")
        result = apply_defence(name, model, tokenizer, data, load_defence_config(name, config))  # merged into the defaults
        row = {"defence": name, "config": config, **scores(result.model, tokenizer, organism.world),
               "last_logged": result.info["history"][-1] if result.info.get("history") else None}
        rows.append(row)
        print(json.dumps(row), flush=True)
    save_result(f"defence_probe_{args.label}", {"rows": rows})


if __name__ == "__main__":
    main()
