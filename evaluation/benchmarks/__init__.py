"""Benchmark scripts, `python -m evaluation.benchmarks.<name>`; what they share is in common.py.

Importing the package applies r2w's process-wide defaults before any benchmark module body runs (the
import-order rule in common.py's docstring).
"""

from r2w.runtime import configure_process

configure_process()
