"""ImmuneLM: make open-weight language models resist harmful fine-tuning, and prove it."""

__version__ = "0.1.0"
