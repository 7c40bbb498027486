"""F2LLM helper library: turn a decoder foundation LLM into a text-embedding model.

The runtime, in the order a run uses it (each package imports only from the ones before it; ``tests/test_layout.py``
holds that): ``embedder`` (00: backbones, tokenization, pooling, prompts, the encoder, export), ``data`` (01:
recipes, curation, mining, the tokenized format), ``losses`` (02: the loss and its fused kernels), ``train`` (03:
loader, trainer, checkpoints, distillation), ``evaluation`` (04: mteb models, tasks, reports). Shared below them:
``paths`` (caches, settings), ``atomic`` (whole-or-nothing writes), ``typed`` (typed settings from mappings).

On top: ``bench`` (benchmarks, kernel compile checks, baselines, generated reports), ``teaching`` (the notebooks'
step-by-step code, plots and exercises) and ``tooling`` (the ``f2llm`` command, the setup check, the notebook
runner).
"""

__version__ = "0.1.0"
