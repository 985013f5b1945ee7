"""Slow tier: the attacker search's database storage against a real PostgreSQL server, started
here from Debian's package (scripts/install_postgres.sh installs it; ./dev.sh slow runs that)."""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest
from test_search import tiny_config

from immunelm.api.search import run_search

pytestmark = pytest.mark.slow


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name)]
    if not found[-1]:
        pytest.skip("PostgreSQL not installed: run sh scripts/install_postgres.sh")
    return found[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throw-away server on 127.0.0.1 (trust auth) for the test's duration. The server refuses
    to run as root, so as root it runs as Debian's 'postgres' user."""
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = tempfile.mkdtemp(prefix="immunelm-pg-")
    if as_user:
        shutil.chown(data, "postgres")
    port = _free_port()
    subprocess.run([*as_user, initdb, "-D", data, "-A", "trust", "-U", "postgres"], check=True, capture_output=True)
    subprocess.run([*as_user, pg_ctl, "-D", data, "-l", f"{data}/log", "-w", "-o", f"-p {port} -k {data} -h 127.0.0.1",
                    "start"], check=True, capture_output=True, timeout=60)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "fast", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)


def test_two_workers_share_a_study_in_postgres(tmp_path, postgres_url):
    started = time.perf_counter()
    cfg = tiny_config(tmp_path, trials=4, workers=2, storage=postgres_url, study="pg-test")
    result = run_search(cfg, tmp_path / "run")
    assert result["n_complete"] == 4 and len({t["worker"] for t in result["trials"]}) == 2
    assert result["storage"].startswith("postgresql://postgres@127.0.0.1")
    # a second machine would run the same command: here a third run finds the trials done
    again = run_search(cfg.model_copy(update={"workers": 1}), tmp_path / "again")
    assert again["trials"] == result["trials"]
    assert time.perf_counter() - started < 3600
