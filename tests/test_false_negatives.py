"""False-negative control (off by default; F2LLM's loss unchanged): in-batch keys whose cosine with a query is above
its positive's plus a margin are masked. Checked against a float64 loop written from the definition, on odd shapes,
for the loss, its gradients and the count; the fused op refuses the option, naming the alternative."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tokenized_pycode

from f2llm_lib.losses import contrastive_loss
from f2llm_lib.train.config import TrainConfig
from f2llm_lib.train.trainer import train

TEMPERATURE = 0.05


def _by_definition(queries, positives, shared, margin):
    """Mean over queries of -log softmax of the positive among the keys left after masking, in float64 loops."""
    keys = torch.cat([positives, shared])
    total, masked = 0.0, 0
    for i in range(len(queries)):
        q = queries[i] / queries[i].norm()
        cosines = torch.stack([q @ (k / k.norm()) for k in keys])
        kept = [j for j in range(len(keys)) if j == i or not bool(cosines[j] > cosines[i] + margin)]
        masked += len(keys) - len(kept)
        total = total + torch.logsumexp(cosines[kept] / TEMPERATURE, 0) - cosines[i] / TEMPERATURE
    return total / len(queries), masked


def _inputs(seed=0, batch=7, dim=13, extra=6):
    generator = torch.Generator().manual_seed(seed)
    queries = torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    positives = queries + 0.8 * torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    shared = torch.randn(extra, dim, generator=generator, dtype=torch.float64)
    shared[0] = queries[2] * 1.3  # closer to query 2 than its positive: a false negative
    shared[1] = queries[4] + 0.05 * torch.randn(dim, generator=generator, dtype=torch.float64)
    positives[5] = queries[1] * 0.9  # query 1 finds another query's positive closer than its own
    return queries, positives, shared


@pytest.mark.parametrize("impl, chunk", [("reference", None), ("chunked", 1), ("chunked", 4), ("chunked", 64)])
@pytest.mark.parametrize("margin", [0.0, 0.1])
def test_masked_loss_and_gradients_match_the_definition_in_float64(impl, chunk, margin):
    leaves = [t.requires_grad_() for t in _inputs()]
    expected, expected_masked = _by_definition(*leaves, margin)
    expected_grads = torch.autograd.grad(expected, leaves)
    stats: dict = {}
    loss = contrastive_loss(leaves[0], leaves[1], shared_negatives=leaves[2], temperature=TEMPERATURE, impl=impl,
                            chunk_size=chunk, false_negative_margin=margin, stats=stats)
    grads = torch.autograd.grad(loss, leaves)
    assert expected_masked >= 3 and stats["masked"] == expected_masked
    torch.testing.assert_close(loss, expected, atol=1e-12, rtol=1e-12)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-11, rtol=1e-10)
    unmasked = contrastive_loss(*[t.detach() for t in leaves[:2]], shared_negatives=leaves[2].detach(),
                                temperature=TEMPERATURE, impl=impl, chunk_size=chunk)
    assert float(unmasked) > float(loss.detach())  # the masked keys were real competitors


def test_without_the_option_the_loss_is_f2llms_and_the_fused_op_refuses_it():
    queries, positives, shared = _inputs(1)
    plain = contrastive_loss(queries, positives, shared_negatives=shared, temperature=TEMPERATURE, impl="chunked")
    huge_margin = contrastive_loss(queries, positives, shared_negatives=shared, temperature=TEMPERATURE,
                                   impl="chunked", false_negative_margin=2.0)  # cosines differ by at most 2
    torch.testing.assert_close(plain, huge_margin, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="not implemented in the fused Triton op; use impl='chunked'"):
        contrastive_loss(queries, positives, temperature=TEMPERATURE, impl="triton", false_negative_margin=0.1)
    with pytest.raises(ValueError, match="must be 0 or more"):
        contrastive_loss(queries, positives, temperature=TEMPERATURE, false_negative_margin=-0.1)


def test_training_logs_the_number_masked_per_step(tmp_path):
    data = tokenized_pycode(tmp_path / "data", 32, 32)
    config = TrainConfig.from_dict({"model": "tiny-qwen3", "data_dir": str(data), "max_steps": 3,
                                    "per_device_batch": 4, "num_negatives": 2, "max_length": 32, "save_every": 100,
                                    "eval_every": 100, "val_fraction": 0.0, "false_negative_margin": 0.0,
                                    "output_dir": str(tmp_path / "run"), "report_to": "none"})
    train(config, export=False)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(isinstance(line["false_negatives_masked"], int) for line in lines)
    assert not (tmp_path / "run" / "f2llm").exists()  # report_to: none writes no TensorBoard files
