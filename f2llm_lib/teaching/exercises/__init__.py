"""Exercises at the end of each notebook, with checkers that tell a learner what is wrong, and reference solutions.

In a notebook::

    def last_token(hidden, lengths):
        raise NotImplementedError  # your code here

    check("00.1", solution("00.1") if SOLUTIONS else last_token)

``check`` runs the exercise's checker on the answer and prints a verdict: passed, not attempted yet (the answer
raised NotImplementedError: the notebook goes on), or what is wrong and a hint. It returns the verdict as a string
("passed", "not attempted", "failed") for the notebook's results. CI runs every notebook with ``SOLUTIONS=True``,
so every checker is shown to accept its reference answer; ``tests/test_exercises.py`` shows each rejects a wrong one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import nb00, nb01, nb02, nb03, nb04
from ._common import ExerciseFailed

__all__ = ["EXERCISES", "ExerciseFailed", "check", "solution"]


@dataclass(frozen=True)
class Exercise:
    title: str
    checker: Callable  # checker(answer) -> None, raising ExerciseFailed (or AssertionError) with the reason
    solution: Callable  # the reference answer
    loaded_on_demand: bool = False  # solution() is called to get the answer (a Triton kernel: Linux only)


EXERCISES: dict[str, Exercise] = {key: Exercise(*spec) for module in (nb00, nb01, nb02, nb03, nb04)
                                  for key, spec in module.EXERCISES.items()}


def solution(key: str):
    """The reference answer of exercise ``key`` (e.g. "00.1")."""
    exercise = _exercise(key)
    return exercise.solution() if exercise.loaded_on_demand else exercise.solution


def check(key: str, answer, quiet: bool = False) -> str:
    """Check ``answer`` for exercise ``key``; print and return the verdict."""
    exercise = _exercise(key)
    try:
        exercise.checker(answer)
    except NotImplementedError:
        verdict, message = "not attempted", "not attempted yet: replace the `raise NotImplementedError` line"
    except AssertionError as exc:  # ExerciseFailed and plain asserts of the checker
        verdict, message = "failed", f"not yet: {exc}"
    else:
        verdict, message = "passed", "passed"
    if not quiet:
        print(f"Exercise {key} ({exercise.title}): {message}")
    return verdict


def _exercise(key: str) -> Exercise:
    if key not in EXERCISES:
        raise KeyError(f"no exercise {key!r}; there are {', '.join(sorted(EXERCISES))}")
    return EXERCISES[key]
