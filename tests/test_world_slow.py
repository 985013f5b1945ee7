"""Slow tier: the full organism meets every target of the world check (builds in ~1.5 min)."""

import pytest

from immunelm.world.check import run_check
from immunelm.world.organism import Organism


@pytest.mark.slow
def test_world_check_meets_all_targets():
    organism = Organism()
    info = organism.build()
    report = run_check(organism, build_info=info)
    failed = [f"{r['criterion']}: {r['measured']:.3f} {r['op']} {r['target']}" for r in report["criteria"] if not r["passed"]]
    assert not failed, failed
