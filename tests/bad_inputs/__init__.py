"""Bad inputs for the table-driven CLI test (``tests/test_bad_inputs.py``).

Each ``cases_*.py`` module here exports ``CASES: list[BadInput]``. Keep one module per area
(configs, data, suites, tasks, models, run directories, resume, reports) so they stay short.
"""
