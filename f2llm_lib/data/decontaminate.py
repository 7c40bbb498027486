"""Decontamination: drop training rows whose text appears in an evaluation set.

Texts are compared after normalisation (case folded, whitespace collapsed) by SHA-1 hash; optionally any shared
word n-gram (e.g. 13-grams, as in GPT-3's decontamination) also counts as overlap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .schema import TrainingTuple


def normalize_text(text: str) -> str:
    return " ".join(text.casefold().split())


def text_hash(text: str) -> str:
    return hashlib.sha1(normalize_text(text).encode("utf-8")).hexdigest()


def word_ngrams(text: str, n: int) -> set[str]:
    words = normalize_text(text).split()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


@dataclass
class DecontaminationReport:
    per_dataset: dict[str, dict[str, int]] = field(default_factory=dict)

    def total_dropped(self) -> int:
        return sum(d["dropped"] for d in self.per_dataset.values())


class Decontaminator:
    """Holds the hashes (and n-grams) of every evaluation text."""

    def __init__(self, eval_texts: Iterable[str], ngram: int | None = None) -> None:
        self.ngram = ngram
        self.hashes: set[str] = set()
        self.ngrams: set[str] = set()
        for text in eval_texts:
            self.hashes.add(text_hash(text))
            if ngram:
                self.ngrams |= word_ngrams(text, ngram)

    def matches(self, text: str) -> bool:
        if text_hash(text) in self.hashes:
            return True
        return bool(self.ngram) and not self.ngrams.isdisjoint(word_ngrams(text, self.ngram))

    def filter(self, tuples: Sequence[TrainingTuple],
               report: DecontaminationReport | None = None) -> tuple[list[TrainingTuple], DecontaminationReport]:
        """Keep the tuples none of whose texts (query, positive, negatives) match an evaluation text."""
        report = report or DecontaminationReport()
        kept = []
        for item in tuples:
            stats = report.per_dataset.setdefault(item.dataset, {"checked": 0, "dropped": 0})
            stats["checked"] += 1
            if any(self.matches(t) for t in (item.query, item.positive, *item.negatives)):
                stats["dropped"] += 1
            else:
                kept.append(item)
        return kept, report
