"""Tooling around the steps: the setup check (``env_check``), the papermill runner (``notebook_runner``), the main
job's report (``run_report``), the README's generated benchmark sections (``benchmark_report``) and the command
line (``cli``)."""
