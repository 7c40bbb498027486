"""Data curation: recipes -> unified (query, positive, hard negatives) tuples -> tokenized training files.

One file per step: ``schema`` (the tuple and its validation), ``readers`` (local files and the hub), ``recipes``
(declarative YAML), ``pycode`` (the offline default corpus), ``mining`` (hard negatives), ``decontaminate``,
``tokenized`` (parquet + manifest) and ``pipeline`` (all of it for one recipe).
"""

from .schema import TASK_TYPES, DataError, TrainingTuple

__all__ = ["TASK_TYPES", "DataError", "TrainingTuple"]
