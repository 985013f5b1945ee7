"""Data layer: examples, chat formatting with response-only labels, and file/hub loaders."""

from immunelm.data.chat import IGNORE_INDEX, PaddingCollator, encode_example, encode_examples, encode_prompt
from immunelm.data.examples import Example
from immunelm.data.sources import DataSourceConfig, describe_examples, load_examples, save_examples_jsonl

__all__ = [
    "Example", "encode_example", "encode_examples", "encode_prompt", "PaddingCollator", "IGNORE_INDEX",
    "DataSourceConfig", "load_examples", "save_examples_jsonl", "describe_examples",
]
