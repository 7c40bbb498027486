"""Training throughput: our trainer vs a plain sentence-transformers MultipleNegativesRankingLoss fit.

    python -m f2llm_lib.bench.train --out runs/bench_train                    # CPU: SmolLM2, 4 and 8 layers
    python -m f2llm_lib.bench.train --device cuda --models smollm2-135m:0 --precision bf16 --batch 16 \\
        --negatives 7 --max-length 256 --zero2 --out runs/bench_train_gpu      # one GPU, + ZeRO-2 as released

Same backbone, same pycode retrieval tuples (query, positive, k hard negatives), same batch size and max length,
one process (each side records the longest text it ran and its texts per step; the benchmark refuses to write a
comparison where they differ); ours with its length-sorted padding and with one pad length for the whole batch
(F2LLM's released collate). Reported per run: real (non-padding) tokens per second and the median step time over
the timed steps (the first step is warm-up), the padding fraction of what the model actually ran, and (CUDA) peak memory
allocated. ``--zero2`` adds our trainer under ``accelerate launch`` with DeepSpeed ZeRO-2 (one process; the
config in ``ci/accelerate/``). ``--models`` takes ``spec:layers`` (0 = all layers); a spec is anything
``load_backbone`` takes, and data are tokenized with that backbone's own tokenizer. ``--save-tuples`` /
``--tuples`` move the curated tuples to a machine that lacks the curation's inputs. Writes CSV and JSON.

``--largest-batch MB`` measures instead how far gradient caching (``grad_cache: true``) stretches one device: the
peak memory of a two-step run (fresh process each) at 4, 8, 16, ... queries per step, without and with the cache,
up to the largest power of two that fits MB (``largest_batch.csv``; ``search_capped`` when even ``--search-max``
fit). A GPU gives the number that matters (F2LLM's 512 queries x 8 texts on one device); the CPU run checks the
mechanism: the cached run's peak grows with the loss inputs, not with the activations of the batch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

from ..atomic import atomic_write_csv, atomic_write_text
from ..data.schema import TrainingTuple
from ..data.tokenized import write_training_files
from ..embedder.backbones import load_backbone, load_tokenizer
from ..embedder.model import F2LLMEncoder
from ..paths import REPO_ROOT
from ..train.config import TrainConfig
from ..train.trainer import train

ZERO2_CONFIGS = {"cuda": REPO_ROOT / "ci" / "accelerate" / "gpu_1_zero2.yaml",
                 "cpu": REPO_ROOT / "ci" / "accelerate" / "cpu_2proc_zero2.yaml"}


def _config(model: str, layers: int, data_dir: Path, out: Path, args: argparse.Namespace,
            padding: str = "sorted") -> dict:
    return {"model": model, "num_layers": layers, "data_dir": str(data_dir), "output_dir": str(out),
            "max_steps": args.steps, "per_device_batch": args.batch, "num_negatives": args.negatives,
            "max_length": args.max_length, "save_every": 10**6, "eval_every": 10**6, "val_fraction": 0.0,
            "mixed_precision": "bf16" if args.precision == "bf16" else "no", "padding": padding}


def _summary(history: list[dict]) -> dict:
    timed = history[1:]  # the first step compiles kernels and fills caches
    out = {"tokens_per_second": statistics.mean(h["tokens_per_second"] for h in timed),
           "padding_fraction": statistics.mean(h["padding_fraction"] for h in timed),
           "step_ms": 1000 * statistics.median(h["step_seconds"] for h in timed),
           "longest_text": max(h["longest_text"] for h in history),
           "texts_per_step": max(h["texts"] for h in history)}
    if "peak_memory_mb" in history[-1]:
        out["peak_memory_mb"] = max(h["peak_memory_mb"] for h in history)
    return out


def _ours(model: str, layers: int, data_dir: Path, work: Path, args: argparse.Namespace,
          padding: str = "sorted") -> dict:
    out = work / f"ours-{Path(model).name}-{layers}-{padding}"
    history = train(TrainConfig.from_dict(_config(model, layers, data_dir, out, args, padding)),
                    export=False)["history"]
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # the sentence-transformers trainer builds its own accelerator next
    return _summary(history)


def _ours_zero2(model: str, layers: int, data_dir: Path, work: Path, args: argparse.Namespace) -> dict:
    """Our trainer as F2LLM released it: accelerate + DeepSpeed ZeRO-2, one process, read from metrics.jsonl."""
    out = work / f"zero2-{Path(model).name}-{layers}"
    config_path = work / f"zero2-{Path(model).name}-{layers}.yaml"
    config_path.write_text(yaml.safe_dump(_config(model, layers, data_dir, out, args)))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ZERO2_CONFIGS[args.device]),
           "--num_processes", "1", "-m", "f2llm_lib.train", "--config", str(config_path), "--no-export"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError("ZeRO-2 run failed:\n" + "\n".join((result.stdout + result.stderr).splitlines()[-25:]))
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return _summary(history)


def _sentence_transformers(model: str, layers: int, tuples: list[TrainingTuple], work: Path,
                           args: argparse.Namespace) -> dict:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    from ..embedder.export import export_sentence_transformers

    backbone, tokenizer = load_backbone(model, num_layers=layers or None)
    folder = export_sentence_transformers(F2LLMEncoder(backbone, tokenizer, max_length=args.max_length),
                                          work / f"st-{layers}")
    del backbone
    st_model = SentenceTransformer(str(folder), device=args.device)
    # The export carries the model's full length (8,192 for SmolLM2), as a user's model should; the comparison needs
    # sentence-transformers to cut texts where ours does (max_length tokens, EOS included).
    st_model.max_seq_length = args.max_length
    rows = {"anchor": [t.query for t in tuples], "positive": [t.positive for t in tuples]}
    for index in range(args.negatives):
        rows[f"negative_{index + 1}"] = [t.negatives[index] for t in tuples]
    counts = {"real": 0, "padded": 0, "longest": 0, "texts": 0}

    def count_tokens(module, call_args, kwargs):
        features = call_args[0] if call_args else kwargs.get("features", kwargs)
        mask = features["attention_mask"]
        counts["real"] += int(mask.sum())
        counts["padded"] += mask.numel()
        counts["longest"] = max(counts["longest"], int(mask.sum(1).max()))
        counts["texts"] += mask.shape[0]

    st_model[0].register_forward_pre_hook(count_tokens, with_kwargs=True)
    times: list[float] = []
    tokens: list[int] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *unused, **kwargs):
            if args.device == "cuda":
                torch.cuda.synchronize()
            self.start, self.real = time.perf_counter(), counts["real"]

        def on_step_end(self, *unused, **kwargs):
            if args.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.start)
            tokens.append(counts["real"] - self.real)

    arguments = SentenceTransformerTrainingArguments(
        output_dir=str(work / f"st-run-{layers}"), per_device_train_batch_size=args.batch, max_steps=args.steps,
        learning_rate=2e-5, report_to="none", save_strategy="no", logging_strategy="no",
        use_cpu=args.device == "cpu", bf16=args.precision == "bf16", dataloader_drop_last=True, seed=0)
    trainer = SentenceTransformerTrainer(model=st_model, args=arguments, train_dataset=Dataset.from_dict(rows),
                                         loss=MultipleNegativesRankingLoss(st_model), callbacks=[Timer()])
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    rates = [n / t for n, t in zip(tokens[1:], times[1:], strict=True)]
    out = {"tokens_per_second": statistics.mean(rates), "padding_fraction": 1 - counts["real"] / counts["padded"],
           "step_ms": 1000 * statistics.median(times[1:]), "longest_text": counts["longest"],
           "texts_per_step": counts["texts"] // args.steps}
    if args.device == "cuda":
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def assert_like_for_like(runs: list[tuple[str, dict]], args: argparse.Namespace) -> None:
    """Refuse to report a comparison whose sides ran different inputs: every trainer must have cut its texts at the
    same length (the longest text it ran, EOS included, is at most ``--max-length`` and equal across trainers: the
    tuples hold longer texts, so each side reaches the cap) and run as many texts per step (batch x (2 + negatives))."""
    seen = {name: (values["longest_text"], values["texts_per_step"]) for name, values in runs}
    expected_texts = args.batch * (2 + args.negatives)
    wrong = {name: v for name, v in seen.items() if v[0] > args.max_length or v[1] != expected_texts}
    if wrong or len(set(seen.values())) != 1:
        raise RuntimeError(f"not like for like: (longest text, texts per step) per trainer {seen}; expected at most "
                           f"{args.max_length} tokens and {expected_texts} texts per step on every side")


def peak_memory_of_training(config: dict, device: str) -> float:
    """Peak memory (MB) of a training run in a fresh process: CPU peak RSS, or CUDA peak allocated memory."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        handle.write(yaml.safe_dump(config))
    try:
        result = subprocess.run([sys.executable, "-m", "f2llm_lib.bench.train", "--peak-of", handle.name,
                                 "--device", device], capture_output=True, text=True, check=False)
    finally:
        Path(handle.name).unlink()
    if result.returncode != 0:
        raise RuntimeError("training run failed:\n" + "\n".join((result.stdout + result.stderr).splitlines()[-25:]))
    return float(json.loads(result.stdout.strip().splitlines()[-1])["peak_mb"])


def _peak_of(config_path: Path, device: str) -> int:
    """The subprocess side of :func:`peak_memory_of_training`: train, print {"peak_mb": ...}."""
    import resource

    train(TrainConfig.from_dict(yaml.safe_load(config_path.read_text())), export=False)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:  # ru_maxrss is KiB on Linux, bytes on macOS
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    print(json.dumps({"peak_mb": round(peak, 1)}))
    return 0


def largest_batches(model: str, layers: int, data_dir: Path, work: Path, args: argparse.Namespace) -> list[dict]:
    """For training without and with gradient caching: the peak memory of a two-step run at batch 2^k queries
    (k = 2, 3, ...) until it exceeds ``--largest-batch`` MB or reaches ``--search-max``; rows of every trial."""
    rows = []
    for grad_cache in (False, True):
        batch = args.search_start
        while batch <= args.search_max:
            out = work / f"{_model_label(model).replace('/', '_')}-{layers}-gc{int(grad_cache)}-b{batch}"
            config = {**_config(model, layers, data_dir, out, args),
                      "per_device_batch": batch, "max_steps": 2, "grad_cache": grad_cache,
                      "grad_cache_chunk": args.grad_cache_chunk}
            peak = peak_memory_of_training(config, args.device)
            rows.append({"grad_cache": grad_cache, "batch": batch, "peak_mb": peak,
                         "fits": peak <= args.largest_batch})
            print(json.dumps(rows[-1]), flush=True)
            if peak > args.largest_batch:
                break
            batch *= 2
    return rows


def _model_label(model: str) -> str:
    """A folder's name, or the spec itself (a hub id, a built-in name)."""
    return Path(model).name if Path(model).exists() else model


def _tokenized(model: str, tuples: list[TrainingTuple], work: Path, max_length: int) -> Path:
    """The tuples tokenized with ``model``'s own tokenizer into a folder under ``work``."""
    data_dir = work / f"data-{_model_label(model).replace('/', '_')}"
    if not data_dir.exists():
        write_training_files({"pycode_retrieval": tuples}, load_tokenizer(model), data_dir, max_length)
    return data_dir


def curate_tuples(count: int) -> list[TrainingTuple]:
    """``count`` pycode retrieval tuples (BM25-mined negatives), the benchmark's data."""
    from ..data.pipeline import curate
    from ..data.recipes import load_recipe

    recipe = load_recipe("pycode")
    recipe.tasks, recipe.max_samples = ["retrieval"], count + count // 4 + 8  # decontamination drops a few
    return curate(recipe, show_progress=False).datasets["pycode_retrieval"][:count]


def _read_tuples(path: Path) -> list[TrainingTuple]:
    return [TrainingTuple(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _parse_models(specs: list[str]) -> list[tuple[str, int]]:
    models = []
    for spec in specs:
        name, sep, layers = spec.rpartition(":")
        if not sep or not layers.isdigit():
            raise SystemExit(f"--models: {spec!r} must be SPEC:LAYERS, e.g. smollm2-135m:4 (0 = all layers)")
        models.append((name, int(layers)))
    return models


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_train"))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    # Real layers only: tiny-qwen3 (2 layers of width 64) is all Python overhead, no measure of a trainer's speed.
    parser.add_argument("--models", nargs="+", default=["smollm2-135m:4", "smollm2-135m:8"], metavar="SPEC:LAYERS")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--zero2", action="store_true", help="also our trainer under DeepSpeed ZeRO-2 (one process)")
    parser.add_argument("--tuples", type=Path, help="JSON lines of tuples (from --save-tuples) instead of curating")
    parser.add_argument("--save-tuples", type=Path, help="curate the tuples, write them here, and stop")
    parser.add_argument("--largest-batch", type=float, metavar="MB",
                        help="instead: the largest batch (a power of two) whose training fits MB of memory (CPU "
                             "peak RSS, CUDA peak allocated), without and with gradient caching")
    parser.add_argument("--search-start", type=int, default=4, help="with --largest-batch: the first batch tried")
    parser.add_argument("--search-max", type=int, default=256, help="with --largest-batch: the last batch tried")
    parser.add_argument("--grad-cache-chunk", type=int, default=64, help="with --largest-batch: texts per piece")
    parser.add_argument("--peak-of", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peak_of:
        return _peak_of(args.peak_of, args.device)
    models = _parse_models(args.models)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible")
    torch.manual_seed(0)
    if args.largest_batch:
        return _largest_batch_main(args, models)
    count = args.batch * (args.steps + 2)
    tuples = _read_tuples(args.tuples) if args.tuples else curate_tuples(count)
    if args.save_tuples:
        args.save_tuples.parent.mkdir(parents=True, exist_ok=True)
        args.save_tuples.write_text("".join(json.dumps(asdict(t)) + "\n" for t in tuples), encoding="utf-8")
        print(f"wrote {len(tuples)} tuples to {args.save_tuples}")
        return 0
    if len(tuples) < count:
        parser.error(f"{len(tuples)} tuples, fewer than batch x (steps + 2) = {count}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for model, layers in models:
            data_dir = _tokenized(model, tuples, work, args.max_length)
            runs = [("f2llm_lib trainer", _ours(model, layers, data_dir, work, args)),
                    ("f2llm_lib trainer, one pad length (F2LLM's released collate)",
                     _ours(model, layers, data_dir, work, args, padding="single"))]
            if args.zero2:
                runs.append(("f2llm_lib trainer, DeepSpeed ZeRO-2", _ours_zero2(model, layers, data_dir, work, args)))
            runs.append(("sentence-transformers MNRL", _sentence_transformers(model, layers, tuples, work, args)))
            assert_like_for_like(runs, args)
            baseline = runs[-1][1]["tokens_per_second"]
            for name, values in runs:
                row = {"model": _model_label(model), "layers": layers or "all",
                       "trainer": name, "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                       "precision": args.precision, "batch": args.batch, "negatives": args.negatives,
                       "max_length": args.max_length, "steps": args.steps,
                       **{k: round(v, 4 if k == "padding_fraction" else 1) for k, v in values.items()},
                       "speed_vs_sentence_transformers": round(values["tokens_per_second"] / baseline, 3)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(key for row in rows for key in row))  # every column once, in order
    atomic_write_csv(args.out / "train_benchmark.csv", rows, fields)
    atomic_write_text(args.out / "train_benchmark.json", json.dumps(rows, indent=2))
    print(f"wrote {args.out / 'train_benchmark.csv'}")
    return 0


def _largest_batch_main(args: argparse.Namespace, models: list[tuple[str, int]]) -> int:
    count = args.search_max * 3  # two steps of the largest batch, with room for the loader's drops
    tuples = _read_tuples(args.tuples) if args.tuples else curate_tuples(count)
    if len(tuples) < 2 * args.search_max:
        raise SystemExit(f"--largest-batch: {len(tuples)} tuples, fewer than two steps of --search-max "
                         f"{args.search_max}; pass more with --tuples or lower --search-max")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for model, layers in models:
            data_dir = _tokenized(model, tuples, work, args.max_length)
            for trial in largest_batches(model, layers, data_dir, work, args):
                rows.append({"model": _model_label(model), "layers": layers or "all",
                             "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                             "precision": args.precision, "negatives": args.negatives,
                             "max_length": args.max_length, "budget_mb": args.largest_batch,
                             "grad_cache_chunk": args.grad_cache_chunk, **trial})
    summary = []
    for (model, layers, grad_cache), trials in _group(rows).items():
        fitting = [r["batch"] for r in trials if r["fits"]]
        summary.append({"model": model, "layers": layers, "grad_cache": grad_cache, "budget_mb": args.largest_batch,
                        "largest_batch": max(fitting) if fitting else 0,
                        "search_capped": all(r["fits"] for r in trials)})
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(args.out / "largest_batch.csv", rows, list(rows[0]))
    atomic_write_text(args.out / "largest_batch.json", json.dumps({"trials": rows, "summary": summary}, indent=2))
    for row in summary:
        print(json.dumps(row))
    print(f"wrote {args.out / 'largest_batch.csv'}")
    return 0


def _group(rows: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["layers"], row["grad_cache"]), []).append(row)
    return groups


if __name__ == "__main__":
    raise SystemExit(main())
