"""Data layer: examples, chat formatting with response-only labels, and file/hub loaders."""

from immunelm.data.examples import Example
from immunelm.data.chat import encode_example, encode_prompt, PaddingCollator

__all__ = ["Example", "encode_example", "encode_prompt", "PaddingCollator"]
