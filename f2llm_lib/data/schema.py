"""F2LLM's unified sample: (query, positive, negative_1..negative_n) with task type, instruction and dataset."""

from __future__ import annotations

from dataclasses import dataclass, field

TASK_TYPES = ("retrieval", "classification", "clustering")
MAX_TEXT_CHARS = 100_000  # longer texts are almost surely a parsing error (a whole file in one field)


class DataError(ValueError):
    """Bad input; the message names the file, the row and the field, and says how to fix it."""


@dataclass
class TrainingTuple:
    dataset: str
    task_type: str
    instruction: str
    query: str
    positive: str
    negatives: list[str] = field(default_factory=list)

    def as_row(self, num_negatives: int) -> dict[str, str]:
        """Columns as in the released F2LLM data: query, passage, negative_1 ... negative_n."""
        row = {"dataset": self.dataset, "task_type": self.task_type, "instruction": self.instruction,
               "query": self.query, "passage": self.positive}
        for index in range(num_negatives):
            row[f"negative_{index + 1}"] = self.negatives[index] if index < len(self.negatives) else ""
        return row


def check_text(value: object, where: str, field_name: str) -> str:
    """A non-empty str of sane length, or a DataError naming ``where`` (file and row) and the field."""
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{field_name}' must be text, got {type(value).__name__} {value!r:.60}; "
                        "fix the source or map another column to it in the recipe's 'fields'")
    if not value.strip():
        raise DataError(f"{where}: field '{field_name}' is empty; remove the row or fill the field")
    if len(value) > MAX_TEXT_CHARS:
        raise DataError(f"{where}: field '{field_name}' has {len(value):,} characters (limit {MAX_TEXT_CHARS:,}); "
                        "it is probably a parsing error in the source file")
    return value


def validate_tuple(item: TrainingTuple, where: str, expected_negatives: int | None = None) -> TrainingTuple:
    if item.task_type not in TASK_TYPES:
        raise DataError(f"{where}: task_type {item.task_type!r} is not one of {TASK_TYPES}")
    check_text(item.query, where, "query")
    check_text(item.positive, where, "positive")
    for index, negative in enumerate(item.negatives):
        check_text(negative, where, f"negative_{index + 1}")
    if expected_negatives is not None and len(item.negatives) != expected_negatives:
        raise DataError(f"{where}: expected {expected_negatives} negatives, found {len(item.negatives)}")
    if item.positive in item.negatives:
        raise DataError(f"{where}: the positive is also listed as a negative; remove it from the negatives")
    return item
