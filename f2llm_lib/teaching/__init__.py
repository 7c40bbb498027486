"""What the notebooks teach with, apart from the runtime: code written to be read and stepped through.

- ``kernel_steps``: notebook 02's fused loss built in steps (chunked bridge, forward kernel, backward kernels, all
  MRL levels in one pass), each checked against float64;
- ``loss_variants``: the loss implementations by name, and their float64 comparison table;
- ``demo``: notebook 00's sentences and diagnostics; ``plots``: the notebooks' figures and diagrams;
- ``exercises``: every notebook's exercises, their checkers and reference solutions.
"""
