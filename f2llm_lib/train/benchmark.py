"""Training throughput: our trainer vs a plain sentence-transformers MultipleNegativesRankingLoss fit.

    python -m f2llm_lib.train.benchmark --out runs/bench_train

Same backbone, same pycode retrieval tuples (query, positive, k hard negatives), same batch size and max length,
one process. Reported per model: real (non-padding) tokens per second, averaged over the timed steps (the first
step is warm-up), and the padding fraction of what the model actually ran. Writes CSV and JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ..backbones import load_backbone
from ..data.pipeline import curate
from ..data.recipes import load_recipe
from ..data.tokenized import write_training_files
from ..model import F2LLMEncoder
from .config import TrainConfig
from .trainer import train


def _ours(model: str, layers: int, data_dir: Path, work: Path, batch: int, negatives: int, steps: int,
          max_length: int) -> dict:
    config = TrainConfig.from_dict({"model": model, "num_layers": layers, "data_dir": str(data_dir),
                                    "output_dir": str(work / f"ours-{model}"), "max_steps": steps,
                                    "per_device_batch": batch, "num_negatives": negatives, "max_length": max_length,
                                    "save_every": 10**6, "eval_every": 10**6, "val_fraction": 0.0})
    history = train(config, export=False)["history"][1:]
    return {"tokens_per_second": statistics.mean(h["tokens_per_second"] for h in history),
            "padding_fraction": statistics.mean(h["padding_fraction"] for h in history)}


def _sentence_transformers(model: str, layers: int, tuples, work: Path, batch: int, negatives: int, steps: int,
                           max_length: int) -> dict:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    from ..export import export_sentence_transformers

    backbone, tokenizer = load_backbone(model, num_layers=layers or None)
    folder = export_sentence_transformers(F2LLMEncoder(backbone, tokenizer, max_length=max_length),
                                          work / f"st-{model}")
    st_model = SentenceTransformer(str(folder), device="cpu")
    rows = {"anchor": [t.query for t in tuples], "positive": [t.positive for t in tuples]}
    for index in range(negatives):
        rows[f"negative_{index + 1}"] = [t.negatives[index] for t in tuples]
    counts = {"real": 0, "padded": 0}

    def count_tokens(module, args, kwargs):
        features = args[0] if args else kwargs.get("features", kwargs)
        mask = features["attention_mask"]
        counts["real"] += int(mask.sum())
        counts["padded"] += mask.numel()

    st_model[0].register_forward_pre_hook(count_tokens, with_kwargs=True)
    times: list[float] = []
    tokens: list[int] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            self.start, self.real = time.perf_counter(), counts["real"]

        def on_step_end(self, *args, **kwargs):
            times.append(time.perf_counter() - self.start)
            tokens.append(counts["real"] - self.real)

    arguments = SentenceTransformerTrainingArguments(
        output_dir=str(work / f"st-run-{model}"), per_device_train_batch_size=batch, max_steps=steps,
        learning_rate=2e-5, report_to="none", save_strategy="no", logging_strategy="no", use_cpu=True,
        dataloader_drop_last=True, seed=0)
    trainer = SentenceTransformerTrainer(model=st_model, args=arguments, train_dataset=Dataset.from_dict(rows),
                                         loss=MultipleNegativesRankingLoss(st_model), callbacks=[Timer()])
    trainer.train()
    rates = [n / t for n, t in zip(tokens[1:], times[1:], strict=True)]
    return {"tokens_per_second": statistics.mean(rates), "padding_fraction": 1 - counts["real"] / counts["padded"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_train"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        recipe = load_recipe("pycode")
        recipe.tasks, recipe.max_samples = ["retrieval"], args.batch * (args.steps + 2)
        from ..backbones import smollm2_tokenizer

        datasets = curate(recipe, show_progress=False).datasets
        write_training_files(datasets, smollm2_tokenizer(), work / "data", args.max_length)
        tuples = datasets["pycode_retrieval"]
        rows = []
        for model, layers in (("tiny-qwen3", 0), ("smollm2-135m", 4)):
            ours = _ours(model, layers, work / "data", work, args.batch, args.negatives, args.steps, args.max_length)
            theirs = _sentence_transformers(model, layers, tuples, work, args.batch, args.negatives, args.steps,
                                            args.max_length)
            for name, values in (("f2llm_lib trainer", ours), ("sentence-transformers MNRL", theirs)):
                rows.append({"model": model, "layers": layers or "all", "trainer": name, "batch": args.batch,
                             "negatives": args.negatives, "max_length": args.max_length, "steps": args.steps,
                             "tokens_per_second": round(values["tokens_per_second"], 1),
                             "padding_fraction": round(values["padding_fraction"], 4)})
            rows[-2]["speed_vs_sentence_transformers"] = round(
                rows[-2]["tokens_per_second"] / rows[-1]["tokens_per_second"], 3)
            print(json.dumps(rows[-2:]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "train_benchmark.csv").open("w", newline="") as handle:
        fields = list(dict.fromkeys(key for row in rows for key in row))  # every column once, in order
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "train_benchmark.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out / 'train_benchmark.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
