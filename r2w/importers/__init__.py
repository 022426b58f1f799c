"""Importers of agents' own logs: one module per format, each a `convert` from records to drafts of
Episodes; `r2w.importers.files.import_file` reads a file, detects or takes its format and returns
(failures, errors) with the same error lines, size limits and scrubbing as r2w's own trace files.

This package's __init__ imports nothing: r2w.traces imports r2w.importers.mlflow_traces (the live
MLflow path), and the file-level importers import r2w.traces.
"""
