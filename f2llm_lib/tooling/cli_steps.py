"""``f2llm export`` and ``f2llm evaluate``: the library calls notebook 04 and the trainer make, from a shell."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _encoder(args: argparse.Namespace):
    """The encoder a command names: a backbone spec or exported folder, or a training checkpoint of that backbone."""
    if args.checkpoint:
        from ..train.checkpoints import load_checkpoint_encoder

        return load_checkpoint_encoder(args.checkpoint, args.model, args.num_layers or None, args.max_length)
    from ..embedder.backbones import load_backbone
    from ..embedder.model import F2LLMEncoder

    model, tokenizer = load_backbone(args.model, num_layers=args.num_layers or None)
    return F2LLMEncoder(model, tokenizer, max_length=args.max_length)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="smollm2-135m",
                        help="backbone spec (smollm2-135m, tiny-qwen3, a hub id) or a model folder (an export)")
    parser.add_argument("--num-layers", type=int, default=0, help="keep only the first k decoder layers (0: all); "
                        "with --checkpoint: the layer count the run trained")
    parser.add_argument("--checkpoint", default="", help="a training checkpoint (RUN/checkpoints/step_N) whose "
                        "weights load into --model")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per text, EOS included")


def _errors():
    from ..data.schema import DataError
    from ..embedder.backbones import BackboneError
    from ..train.checkpoints import RunFolderError

    return DataError, BackboneError, RunFolderError


def export_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Write a sentence-transformers folder (Transformer -> "
                                     "last-token pooling -> Normalize, EOS appended by its tokenizer), with prompts "
                                     "and a model card; optionally upload it to the Hugging Face hub.")
    _model_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (replaced whole, atomically)")
    parser.add_argument("--query-instruction", default=None, help="stored as the 'query' prompt")
    parser.add_argument("--data", type=Path, default=None, help="the tokenized folder the model trained on: its "
                        "datasets' instructions become prompts, its datasets the model card's data")
    parser.add_argument("--push-to-hub", default="", metavar="REPO", help="then upload the folder to this hub "
                        "repository (off by default; needs network and a token)")
    parser.add_argument("--dry-run", action="store_true", help="with --push-to-hub: list what would be uploaded")
    args = parser.parse_args(argv)
    from ..data.tokenized import TokenizedDataError
    from ..embedder.export import export_sentence_transformers, training_data_facts, training_prompts

    try:
        prompts, training = {}, {"backbone": args.model}
        if args.data is not None:
            from ..data.tokenized import TokenizedData

            manifest = TokenizedData(args.data).manifest
            prompts = training_prompts(manifest)
            training.update(training_data_facts(manifest))
        out = export_sentence_transformers(_encoder(args), args.out, query_instruction=args.query_instruction,
                                           prompts=prompts, training=training)
    except _errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except TokenizedDataError as exc:  # --data is not a tokenized folder
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result: dict = {"export": str(out)}
    if args.push_to_hub:
        files = sorted(p for p in out.rglob("*") if p.is_file() and not p.name.startswith("."))
        result["upload"] = {"repo": args.push_to_hub, "dry_run": args.dry_run,
                            "files": {str(p.relative_to(out)): p.stat().st_size for p in files}}
        if not args.dry_run:
            from huggingface_hub import HfApi

            api = HfApi()
            api.create_repo(args.push_to_hub, repo_type="model", exist_ok=True)
            api.upload_folder(folder_path=str(out), repo_id=args.push_to_hub, repo_type="model",
                              ignore_patterns=[".*"])
    print(json.dumps(result))  # one line: scripts read the last line
    return 0


def evaluate_main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Score a model with mteb's evaluators; prints one row "
                                     "per (model, task) and writes them as JSON with --out.")
    _model_arguments(parser)
    parser.add_argument("--tasks", default="pycode", help="pycode (offline: PyCode retrieval, classification, "
                        "clustering), or mteb task names / a benchmark name from the hub, comma-separated")
    parser.add_argument("--sts-file", type=Path, default=None, help="a local STS file (s1, s2, score) instead")
    parser.add_argument("--max-queries", type=int, default=400, help="pycode: queries of the retrieval task")
    parser.add_argument("--baselines", default="", help="comma-separated: bm25, minilm (scored beside the model)")
    parser.add_argument("--cache", type=Path, default=Path("runs/mteb-cache"), help="mteb's result cache")
    parser.add_argument("--out", type=Path, default=None, help="write the rows to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="without mteb's progress bars")
    args = parser.parse_args(argv)
    from ..evaluation.mteb_model import F2LLMMtebModel
    from ..evaluation.run import bm25_model, evaluate, hub_tasks, minilm_model
    from ..evaluation.tasks import load_sts_file, pycode_tasks

    try:
        if args.sts_file is not None:
            tasks = [load_sts_file(args.sts_file)]
        elif args.tasks == "pycode":
            tasks = pycode_tasks(max_queries=args.max_queries)
        else:
            names = [n.strip() for n in args.tasks.split(",") if n.strip()]
            tasks = hub_tasks(names[0] if len(names) == 1 and "(" in names[0] else names)
        label = Path(args.checkpoint or args.model).name or args.model
        models: dict[str, object] = {label: F2LLMMtebModel(_encoder(args), label)}
        baselines = {b.strip() for b in args.baselines.split(",") if b.strip()}
        unknown = baselines - {"bm25", "minilm"}
        if unknown:
            raise SystemExit(f"error: unknown baseline(s) {sorted(unknown)}; choose from bm25, minilm")
        if "bm25" in baselines:
            models["BM25"] = bm25_model()
        if "minilm" in baselines:
            models["all-MiniLM-L6-v2"] = minilm_model()
        rows = evaluate(models, tasks, args.cache, retrieval_only={"BM25"}, show_progress=not args.no_progress)
    except _errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for row in rows:
        print(f"{row['model']:<28} {row['task']:<28} {row['type']:<16} {row['main_score']:<12} {row['score']:.2f}")
    if not args.checkpoint and Path(args.model).is_dir():
        from ..embedder.export import add_scores_to_card

        own = [{"task": r["task"], "metric": r["main_score"], "score": r["score"]} for r in rows if r["model"] == label]
        if add_scores_to_card(args.model, own):  # an export of this library: its model card shows the scores
            print(f"[evaluate] scores added to {Path(args.model) / 'README.md'}", file=sys.stderr)
    if args.out is not None:
        from ..atomic import atomic_write_text

        atomic_write_text(args.out, json.dumps(rows, indent=2))
    return 0
