"""One bad input: the CLI arguments, the files it needs, and what the one error line must say.

The runner (``tests/test_bad_inputs.py``) runs the real ``immunelm`` entry point in-process
with the working directory set to a fresh temporary folder, and asserts for every case:
exit code 2, exactly one non-empty line on stderr, no traceback, every ``expect`` fragment in
that line, and that the folder holds exactly the same files afterwards (no run directory, no
partial result, no cache built: the error came before any work).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

TINY_ORGANISM = [
    "organism.world.entities_per_harm_domain=6", "organism.world.n_countries=4", "organism.world.n_animals=4",
    "organism.world.n_words=4", "organism.pretrain.max_steps=8", "organism.pretrain.warmup_steps=2",
    "organism.pretrain.batch_size=16",
    "organism.pretrain.progress=false", "organism.align.max_steps=3", "organism.align.progress=false",
]
CACHE = "cache_dir=cache"  # relative to the case's temporary working directory

PAIRS = "".join(f'{{"prompt": "say {c}", "response": "{c}"}}\n' for c in "abcdef")


@dataclass
class BadInput:
    id: str
    argv: list[str]
    expect: list[str]
    files: dict[str, str | bytes] = field(default_factory=dict)
    setup: Callable[[Path], None] | None = None  # runs after files are written (e.g. a prior run)
    reason: str = ""  # why this input is bad, when the id does not say it

    def write_files(self, root: Path) -> None:
        for name, content in self.files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
        if self.setup is not None:
            self.setup(root)
