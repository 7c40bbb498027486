"""The workbench: what measures and reports on the runtime, never imported by a training run.

- ``loss``: the loss implementations against each other and against memeff / Inf-CL (``loss_baselines``);
- ``kernels``: compile every Triton kernel variant for a GPU architecture without a GPU (registers, spills);
- ``train``: trainer throughput against sentence-transformers' trainer, at equal lengths, batch and data;
- ``scale``: the tokenized-data path (write, open, load) at 10k..1M F2LLM-shaped queries;
- ``report`` / ``run_report``: the README's generated blocks, from the committed CSVs and from the latest run.

Each module runs as ``f2llm bench loss|train|scale``, ``f2llm kernels`` or ``f2llm report run|benchmarks``.
"""
