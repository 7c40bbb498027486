"""Every exercise: its checker accepts the reference answer, rejects typical wrong ones with a message that helps,
and reports an untouched exercise as not attempted (so a learner's notebook runs on)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from f2llm_lib.teaching.exercises import EXERCISES, check, solution


def _not_attempted(*args, **kwargs):
    raise NotImplementedError


WRONG = {  # exercise -> (a typical wrong answer, words the message must contain)
    "00.1": (lambda hidden, lengths: hidden[:, -1], "lengths - 1"),
    "00.2": (lambda lengths, width: (torch.arange(width)[None, :] >= (width - lengths)[:, None]).long(), "left"),
    "01.1": (lambda scores, positive, k: list(np.argsort(-scores)[:k]), "5 best"),
    "01.2": (lambda window, positive, margin: float((np.asarray(window) < positive).mean()), "margin"),
    "02.1": (lambda q, k, t: F.cross_entropy(q @ k.T / t, torch.arange(len(q))), "normalise"),
    "02.2": (lambda ma, sa, mb, sb: (max(ma, mb), sa + sb), "Rescale"),
    "03.1": (lambda rows, rank, per_device: rows[rank::2][:per_device], "contiguous"),
    "03.2": (lambda grads, rank: grads[rank][2 * rank:2 * rank + 2], "summed"),
    "04.1": (lambda ranking, relevant: float(any(d in relevant for d in ranking[:10])), "log2"),
    "04.2": (lambda hidden, mask: hidden.mean(1), "pad positions"),
}


def test_every_exercise_has_a_wrong_answer_probe():
    assert set(WRONG) == set(EXERCISES)
    assert {key.split(".")[0] for key in EXERCISES} == {"00", "01", "02", "03", "04"}


@pytest.mark.parametrize("key", sorted(EXERCISES))
def test_reference_answer_passes(key):
    assert check(key, solution(key), quiet=True) == "passed"


@pytest.mark.parametrize("key", sorted(EXERCISES))
def test_wrong_answer_is_rejected_with_a_useful_message(key, capsys):
    answer, words = WRONG[key]
    assert check(key, answer) == "failed"
    printed = capsys.readouterr().out
    assert "not yet:" in printed and words in printed, printed


@pytest.mark.parametrize("key", sorted(EXERCISES))
def test_untouched_exercise_is_not_attempted(key):
    assert check(key, _not_attempted, quiet=True) == "not attempted"


def test_unknown_exercise_names_the_known_ones():
    with pytest.raises(KeyError, match="00.1"):
        check("99.9", solution("00.1"))
