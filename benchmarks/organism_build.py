"""Organism build time from scratch (target <= 300 s on 2 CPU cores) and cached re-use time.

    python benchmarks/organism_build.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from immunelm.world.organism import Organism

from common import save_result


def main() -> None:
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        organism = Organism(cache_root=Path(tmp))
        start = time.perf_counter()
        info = organism.build()
        fresh = time.perf_counter() - start
        start = time.perf_counter()
        again = Organism(cache_root=Path(tmp))
        again.build()
        again.load("aligned")
        reuse = time.perf_counter() - start
    result = {
        "fresh_build_seconds": fresh, "base_seconds": info["base"]["seconds"],
        "aligned_seconds": info["aligned"]["seconds"], "cached_reuse_seconds": reuse,
        "parameters": info["base"]["parameters"], "target_build_seconds": 300, "torch_threads": 2,
    }
    save_result("organism_build", result)
    print(f"organism build {fresh:.1f}s (base {info['base']['seconds']:.1f}s, aligned "
          f"{info['aligned']['seconds']:.1f}s); cached re-use {reuse:.2f}s")


if __name__ == "__main__":
    main()
