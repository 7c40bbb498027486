"""F2LLM helper library: turn a decoder foundation LLM into a text-embedding model.

One file per concern: ``backbones`` (load a model spec), ``tokenization`` (EOS handling),
``pooling`` (last-token pooling), ``model`` (the encoder), ``notebook_runner`` (papermill runs).
"""

__version__ = "0.1.0"
