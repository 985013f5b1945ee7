"""Evaluation: batched generation and the judges that score what a model says."""
