"""F2LLM helper library: turn a decoder foundation LLM into a text-embedding model.

Laid out by the notebooks' steps: ``embedder`` (00: backbones, tokenization, pooling, the encoder, export),
``data`` (01: recipes, curation, mining, the tokenized format), ``losses`` (02: the loss, its kernels and
benchmarks), ``train`` (03: loader, trainer, checkpoints, distillation), ``evaluation`` (04: mteb models, tasks,
reports); ``exercises`` (every notebook's exercises and checkers), ``plots``, ``paths``, ``demo``, and ``tooling``
(the runner, the run report, the CLI).
"""

__version__ = "0.1.0"
