"""Tooling on top of the steps: the ``f2llm`` command (``cli``, ``cli_steps``), the setup check (``env_check``) and
the papermill runner (``notebook_runner``)."""
