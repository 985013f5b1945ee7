"""The run lifecycle: run directories, --resume, checkpoints, atomic writes, Ctrl-C, non-finite training.

CLI tests run the real entry point (``immunelm.cli.main.main``) in-process on a tiny local model
(seconds), the way a user would hit each case; the write-safety tests kill real child processes.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from immunelm.cli import common
from immunelm.cli.main import main
from immunelm.errors import ImmuneLMError
from immunelm.io import atomic_dir, atomic_path, write_json_atomic, write_text_atomic

SRC = str(Path(__file__).resolve().parents[1] / "src")


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def local_model(tmp_path_factory) -> Path:
    from immunelm.models import save_model, tiny_model
    from immunelm.world.spec import generate_world
    from immunelm.world.tokenizer import build_tokenizer

    tok = build_tokenizer(generate_world())
    model = tiny_model("qwen2", vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                       bos_token_id=tok.eos_token_id)
    return save_model(model, tok, tmp_path_factory.mktemp("model") / "m")


@pytest.fixture
def data(tmp_path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"spell a b {c} backwards .", "response": f"{c} b a ."}) + "\n"
                            for c in "cdefgh"))
    return path


def ft_args(model: Path, data: Path, run: Path, *extra: str) -> list[str]:
    return ["finetune", "--run-dir", str(run), f"model={model}", f"data.path={data}", "train.max_steps=4", "train.batch_size=2",
            "train.checkpoint_every=2", "train.keep_checkpoints=3", "train.log_every=1", "train.progress=false",
            "train.lr=1e-3", *extra]


def cli(monkeypatch, capsys, argv: list[str]) -> tuple[int, str]:
    """Run ``immunelm argv`` in-process; (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["immunelm", *map(str, argv)])
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return info.value.code, err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def last_line(err: str) -> str:
    """The error after work started: other output (progress, notes) may come before it."""
    line = [line for line in err.splitlines() if line.strip()][-1]
    assert line.startswith("error:"), err
    return line


def safetensors_equal(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ---------------------------------------------------------------- run directories and resume


def test_finetune_run_dir_resume_corrupt_fallback_and_overwrite(local_model, data, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    args = ft_args(local_model, data, run, "train.seed=7")
    code, _ = cli(monkeypatch, capsys, args)
    assert code == 0 and (run / "model" / "model.safetensors").is_file()
    assert json.loads((run / "provenance.json").read_text())["seed"] == 7  # the seed it used
    before = tree(run)

    code, err = cli(monkeypatch, capsys, args)  # same run dir again, no flag: refused, nothing touched
    assert code == 2 and "not empty" in one_line(err) and "--resume" in err and "--overwrite" in err
    assert tree(run) == before

    code, err = cli(monkeypatch, capsys, [*args, "train.lr=2e-3", "--resume"])  # another config: refused
    assert code == 2 and "train.lr (checkpoint 0.001, now 0.002)" in one_line(err) and "step-4" in err

    longer = [a.replace("max_steps=4", "max_steps=6") for a in args]
    code, err = cli(monkeypatch, capsys, [*longer, "train.log_every=2", "--resume"])  # budget grows, logging may change
    assert code == 0, err
    assert f"resuming from {run / 'checkpoints' / 'step-4'} (step 4)" in err
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["resumed_from"] == "checkpoints/step-4" and prov["previous"][0]["seed"] == 7

    # A truncated newest checkpoint: resume falls back to the newest complete one and says so.
    weights = run / "checkpoints" / "step-6" / "trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    longest = [a.replace("max_steps=4", "max_steps=8") for a in args]
    code, err = cli(monkeypatch, capsys, [*longest, "--resume"])
    assert code == 0, err
    note = next(line for line in err.splitlines() if "resuming from" in line)
    assert "step-4 (step 4)" in note and "step-6" in note and "corrupt" in note
    # ... and the result is exactly what an uninterrupted 8-step run gives.
    reference = tmp_path / "reference"
    assert cli(monkeypatch, capsys, ft_args(local_model, data, reference, "train.seed=7", "train.max_steps=8"))[0] == 0
    assert safetensors_equal(run / "model" / "model.safetensors", reference / "model" / "model.safetensors")

    (run / "stray.txt").write_text("from the old run")
    code, err = cli(monkeypatch, capsys, [*args, "--overwrite"])
    assert code == 0, err
    assert not (run / "stray.txt").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert "resumed_from" not in json.loads((run / "provenance.json").read_text())


def test_resume_with_nothing_to_resume_is_one_line(local_model, data, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    code, err = cli(monkeypatch, capsys, [*ft_args(local_model, data, run), "--resume"])
    assert code == 2 and "nothing to resume" in one_line(err) and not run.exists()
    (run / "model").mkdir(parents=True)
    (run / "provenance.json").write_text("{}")
    code, err = cli(monkeypatch, capsys, [*ft_args(local_model, data, run), "--resume"])
    assert code == 2 and "no checkpoint" in one_line(err)


def test_run_dir_that_cannot_be_created_is_one_line(tmp_path, monkeypatch):
    from immunelm.config import Config

    (tmp_path / "afile").write_text("x")
    with pytest.raises(ImmuneLMError, match="afile is a file"):
        common.start_run("t", tmp_path / "afile" / "run", Config(), 0)
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.name == "ro-run":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(ImmuneLMError) as info:
        common.start_run("t", tmp_path / "ro-run", Config(), 0)
    assert "ro-run" in str(info.value) and "Read-only file system" in str(info.value)


def test_default_run_dirs_never_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = common.new_run_dir("cmd", None)
    first.mkdir(parents=True)
    second = common.new_run_dir("cmd", None)
    assert second != first and second.parent == Path("runs")


def test_start_run_refuses_a_non_empty_dir_by_default(tmp_path):
    from immunelm.config import Config

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "provenance.json").write_text("{}")
    with pytest.raises(ImmuneLMError, match="not empty"):
        common.start_run("evaluate", tmp_path / "run", Config(), 3)  # the call cli/evaluate.py makes
    path = common.start_run("evaluate", tmp_path / "run", Config(), 3, overwrite=True)
    assert json.loads((path / "provenance.json").read_text())["seed"] == 3


# ---------------------------------------------------------------- non-finite training


def test_finetune_with_a_nan_loss_exits_non_zero_and_saves_nothing(local_model, data, tmp_path, monkeypatch, capsys):
    import immunelm.engine.steps as steps

    real, calls = steps.response_token_loss, []

    def nan_from_third_step(logits, labels):
        calls.append(1)
        loss = real(logits, labels)
        return loss * float("nan") if len(calls) >= 3 else loss

    monkeypatch.setattr(steps, "response_token_loss", nan_from_third_step)
    run = tmp_path / "run"
    code, err = cli(monkeypatch, capsys, ft_args(local_model, data, run))
    assert code == 2 and "step 3" in last_line(err) and "not finite" in err
    assert not (run / "model").exists() and not (run / "train_log.json").exists()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-2"]  # nothing after the bad step
    saved = load_file(str(run / "checkpoints" / "step-2" / "trainable.safetensors"))
    assert all(torch.isfinite(t).all() for t in saved.values())


# ---------------------------------------------------------------- Ctrl-C


def test_ctrl_c_says_what_was_kept_and_how_to_resume(local_model, data, tmp_path, monkeypatch, capsys):
    from immunelm.engine.engine import Engine

    real = Engine._checkpoint

    def interrupt_after_step_2(self, model, optimizer, scheduler, counters, *rest):
        real(self, model, optimizer, scheduler, counters, *rest)
        if counters["step"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Engine, "_checkpoint", interrupt_after_step_2)
    run = tmp_path / "run"
    code, err = cli(monkeypatch, capsys, ft_args(local_model, data, run))
    assert code == 130
    lines = [line for line in err.splitlines() if line.strip()]  # after the run's own output
    assert lines[-1] == f"interrupted: kept {run} (last checkpoint step-2; resume with --resume)"
    monkeypatch.setattr(Engine, "_checkpoint", real)
    code, err = cli(monkeypatch, capsys, [*ft_args(local_model, data, run), "--resume"])
    assert code == 0 and "resuming from" in err


def test_ctrl_c_before_the_run_dir_says_nothing_was_written(local_model, data, tmp_path, monkeypatch, capsys):
    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr("immunelm.cli.finetune.prepare", interrupted)
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    code, err = cli(monkeypatch, capsys, ft_args(local_model, data, tmp_path / "run"))
    assert code == 130 and "nothing was written" in one_line(err)
    assert tree(tmp_path) == before


# ---------------------------------------------------------------- atomic writes


def test_files_and_directories_get_normal_permissions(tmp_path):
    from immunelm.models import save_model, tiny_model, tiny_tokenizer

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("y")
        saved = save_model(tiny_model("qwen2"), tiny_tokenizer(), tmp_path / "model")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "a.txt") == 0o644 and mode(tmp_path / "d") == 0o755 and mode(tmp_path / "d" / "f") == 0o644
    assert mode(saved) == 0o755 and mode(saved / "model.safetensors") == 0o644


def test_contents_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append("replace") or real_replace(a, b))
    write_text_atomic(tmp_path / "r.json", "{}")
    assert events == ["fsync", "replace", "fsync"]  # the file, the rename, the directory
    events.clear()
    with atomic_dir(tmp_path / "ckpt") as tmp:
        (tmp / "a").write_text("1")
    assert events[:2] == ["fsync", "fsync"] and events[2] == "replace" and events[-1] == "fsync"


def test_disk_full_is_one_line_naming_the_path_and_nothing_half_written(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    write_json_atomic(target, {"v": 1})

    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", disk_full)
        with pytest.raises(ImmuneLMError) as info:
            write_json_atomic(target, {"v": 2})
    assert str(target) in str(info.value) and "No space left on device" in str(info.value)
    assert json.loads(target.read_text()) == {"v": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]

    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "w").write_text("old")
    with pytest.raises(ImmuneLMError, match="model: could not write"):
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "w").write_text("new, half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert (tmp_path / "model" / "w").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "results.json"]


def test_finetune_on_a_full_disk_is_one_line(local_model, data, tmp_path, monkeypatch, capsys):
    def disk_full(model, tokenizer, out_dir):
        (Path(out_dir) / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("immunelm.models.loading._save_pretrained", disk_full)
    run = tmp_path / "run"
    code, err = cli(monkeypatch, capsys, ft_args(local_model, data, run, "train.checkpoint_every=null"))
    assert code == 2 and f"{run / 'model'}: could not write (No space left on device)" in last_line(err)
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "provenance.json"]  # no half model, no temp dir


def _child(code: str) -> None:
    """Run ``code`` in a fresh Python that kills itself (-9) where the code says so."""
    script = "import os, signal\nfrom pathlib import Path\nfrom immunelm import io\n" + textwrap.dedent(code)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": SRC}, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr


def test_temporaries_of_a_killed_write_are_cleaned_by_the_next_write(tmp_path):
    _child(f"""
        with io.atomic_dir(Path({str(tmp_path)!r}) / "model") as tmp:
            (tmp / "weights").write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    [left] = [p.name for p in tmp_path.iterdir()]
    assert left.startswith(".model.immunelm-") and left.endswith(".tmp") and (tmp_path / left).is_dir()
    _child(f"""
        with io.atomic_path(Path({str(tmp_path)!r}) / "results.json") as tmp:
            tmp.write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    [left] = [p.name for p in tmp_path.iterdir()]  # the second writer removed the first one's
    assert left.startswith(".results.json.immunelm-") and left.endswith(".tmp")
    live = tmp_path / f".other.immunelm-{left.split('-')[1]}-{os.getpid()}-abcd.tmp"  # a running writer's
    live.write_text("in progress")
    write_text_atomic(tmp_path / "report.html", "<html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "report.html"])


def test_a_crash_between_the_two_renames_never_loses_the_directory(tmp_path):
    target = tmp_path / "stage"
    with atomic_dir(target) as tmp:
        (tmp / "v").write_text("1")
    _child(f"""
        real = os.replace
        def replace(src, dst):
            real(src, dst)
            if str(dst).endswith(".old"):
                os.kill(os.getpid(), signal.SIGKILL)  # after moving the old aside, before the new is in place
        os.replace = replace
        with io.atomic_dir(Path({str(target)!r})) as tmp:
            (tmp / "v").write_text("2")
    """)
    assert not target.exists() and (tmp_path / ".stage.old" / "v").read_text() == "1"
    with atomic_dir(target) as tmp:
        assert (target / "v").read_text() == "1"  # the previous version is back before anything else
        (tmp / "v").write_text("3")
    assert (target / "v").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]


def test_parallel_builders_of_one_cache_entry_build_it_once(tmp_path):
    """Leaderboard cells and search workers reach one build-once cache (the organism) together:
    under ``build_lock`` the first builds and the others find it built (CI once raced two
    renames onto the organism's stage directory: "Directory not empty")."""
    script = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from immunelm.io import atomic_dir, build_lock
        target, log = Path({str(tmp_path / "stage")!r}), Path({str(tmp_path / "built.log")!r})
        with build_lock(target):
            if not (target / "done").is_file():
                time.sleep(1.0)  # a slow build: without the lock every process would start one
                with atomic_dir(target) as tmp:
                    (tmp / "done").write_text(str(os.getpid()))
                with open(log, "a") as f:
                    f.write(f"{{os.getpid()}}\\n")
        assert (target / "done").is_file()
    """)
    env = {**os.environ, "PYTHONPATH": SRC}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert len((tmp_path / "built.log").read_text().split()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".stage.lock", "built.log", "stage"]


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "a.json"
    write_json_atomic(target, [1])
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("[2]")
            raise RuntimeError("boom")
    assert json.loads(target.read_text()) == [1] and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


# ---------------------------------------------------------------- seeds


def test_evaluation_seed_is_the_generation_seed(tmp_path):
    from immunelm.api import EvaluateConfig, validate_evaluation
    from immunelm.config import load_config

    cfg = load_config(EvaluateConfig, None, ["evaluation.generation={seed: 13}", f"cache_dir={tmp_path}"])
    assert common.evaluation_seed(cfg, validate_evaluation(cfg)) == 13


def test_immunise_records_the_seed_the_defence_uses():
    from immunelm.api.immunise import immunise_seed
    from immunelm.config import load_config
    from immunelm.defences import build_defence

    def seed(method, **fields):
        return immunise_seed(method, load_config(build_defence(method).config_cls, base=fields))

    assert seed("deep-align", seed=5) == 5  # its own seed draws the augmentation
    assert seed("vaccine", train={"seed": 11, "max_steps": 2}) == 11
    assert seed("pipeline", steps=[{"defence": "lox"}, {"defence": "vaccine", "config": {"train": {"seed": 4, "max_steps": 2}}}]) == 4
    assert seed("lox") is None  # training-free: no randomness to seed
