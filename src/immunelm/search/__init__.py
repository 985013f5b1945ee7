"""Attacker hyper-parameter search (Optuna TPE under the utility bound), shared by many workers
through Optuna's storage. The space is data (:mod:`immunelm.search.space`); the study and its
workers are in :mod:`immunelm.search.study`; the command in :mod:`immunelm.api.search`."""

from immunelm.search.space import SearchSpace, load_space, space_names

__all__ = ["SearchSpace", "load_space", "space_names"]
