"""The same finetune run under `accelerate launch` with 2 CPU processes (DDP, gloo) equals the
single-process run with the same global batch: the engine needs no code change to go multi-process."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from immunelm.cli.main import app
from test_cli import TINY_ORGANISM


@pytest.mark.skipif(shutil.which("accelerate") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "accelerate")),
                    reason="accelerate launcher not installed")
def test_ddp_two_processes_matches_single_process(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"spell a b {c} backwards .", "response": f"{c} b a ."}) + "\n"
                            for c in "cdefghij"))
    common = [f"cache_dir={tmp_path / 'cache'}", *[a for a in TINY_ORGANISM if a.startswith("organism.")],
              f"data.path={data}", "train.max_steps=3", "train.progress=false", "train.optimizer=sgd", "train.lr=0.5",
              "model=organism:aligned"]
    single = CliRunner().invoke(app, ["finetune", "--run-dir", str(tmp_path / "one"), *common, "train.batch_size=4"])
    assert single.exit_code == 0, single.output

    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "immunelm", "finetune", "--run-dir", str(tmp_path / "two"), *common,
         "train.batch_size=2"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "train_log.json").read_text())["processes"] == 2

    one = load_file(str(tmp_path / "one" / "model" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    start = load_file(str(next((tmp_path / "cache").glob("aligned-*")) / "model.safetensors"))
    assert one.keys() == two.keys()
    assert any(not torch.equal(one[k], start[k]) for k in one)  # training happened
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)
