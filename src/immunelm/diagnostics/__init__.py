"""Mechanistic diagnostics: measurements of a model's weights, features and landscape."""
