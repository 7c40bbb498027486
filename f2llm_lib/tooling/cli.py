"""The ``f2llm`` command: every step of the pipeline and every workbench tool, one subcommand each.

    f2llm curate pycode --out runs/data/pycode              # 01: recipes -> tuples -> tokenized files
    f2llm train --config cfg.yaml                           # 03: one process (accelerate launch -m f2llm_lib.train
                                                            #     ... for several)
    f2llm export --model smollm2-135m --num-layers 8 --checkpoint RUN/checkpoints/step_54 --out model/
    f2llm evaluate --model runs/train/final --tasks pycode  # 04: mteb on the offline tasks, a file or the hub
    f2llm bench loss|train|scale ...                        # benchmarks (CSV + plot into --out)
    f2llm kernels --out runs/kernel_check                   # compile every loss kernel for a GPU, without one
    f2llm check | embed | notebooks | report | backbone

Each subcommand's ``--help`` lists its options. The ``python -m f2llm_lib....`` paths the README used before still
work as aliases: each subcommand runs that module's own ``main``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

# subcommand -> (module whose main(argv, prog) it runs, one-line help)
STEPS = {
    "curate": ("f2llm_lib.data.pipeline", "curate data recipes into one folder of tokenized training files"),
    "train": ("f2llm_lib.train.__main__", "finetune a backbone from a YAML config (one process)"),
    "export": ("f2llm_lib.tooling.cli_steps:export_main", "write a sentence-transformers folder from a backbone or "
               "a training checkpoint"),
    "evaluate": ("f2llm_lib.tooling.cli_steps:evaluate_main", "score models on mteb tasks (offline pycode tasks, "
                 "local files, or the hub)"),
    "kernels": ("f2llm_lib.bench.kernels", "compile every loss kernel variant for a GPU architecture (no GPU needed)"),
    "notebooks": ("f2llm_lib.tooling.notebook_runner", "run the notebooks headless with a parameter profile"),
    "backbone": ("f2llm_lib.embedder.backbones", "write a backbone's architecture without weights, or random weights"),
}
BENCHES = {
    "loss": ("f2llm_lib.bench.loss", "the loss implementations against baselines (time, memory)"),
    "train": ("f2llm_lib.bench.train", "trainer throughput against sentence-transformers at equal lengths"),
    "scale": ("f2llm_lib.bench.scale", "the tokenized-data path at 10k..1M queries (time, memory)"),
}
REPORTS = {
    "run": ("f2llm_lib.bench.run_report", "a make-run's report, and the README block from the latest run"),
    "benchmarks": ("f2llm_lib.bench.report", "the README's benchmark blocks from the committed CSVs"),
}


def _runner(target: str):
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function or "main")


def _check(args: argparse.Namespace) -> int:
    from .env_check import environment_report, requirements, verdict

    if args.json:
        print(json.dumps(environment_report(), indent=2))
    text, status = verdict(requirements())
    print(text)
    return status


def _embed(args: argparse.Namespace) -> int:
    from ..embedder.backbones import BackboneError, load_backbone
    from ..embedder.model import F2LLMEncoder

    for index, text in enumerate(args.texts):
        binary = any("\udc80" <= ch <= "\udcff" for ch in text)  # bytes that are not UTF-8 arrive as surrogates
        if binary or not text.strip():
            print(f"error: text #{index + 1} is {'not UTF-8 text (binary bytes)' if binary else 'empty'}; give the "
                  "texts to embed as arguments, e.g. f2llm embed 'first text' 'second text'", file=sys.stderr)
            return 2
    try:
        model, tokenizer = load_backbone(args.model, num_layers=args.num_layers or None)
    except BackboneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    embeddings = F2LLMEncoder(model, tokenizer).encode(args.texts, instruction=args.instruction)
    print(json.dumps({"dim": int(embeddings.shape[1]), "cosine": (embeddings @ embeddings.T).round(4).tolist()}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="f2llm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Delegated subcommands parse their own options (add_help=False: their --help is theirs, with all options).
    for name, (target, text) in STEPS.items():
        sub.add_parser(name, help=text, add_help=False).set_defaults(target=target, prog=f"f2llm {name}")
    for group, table, text in (("bench", BENCHES, "benchmarks: loss, train or scale"),
                               ("report", REPORTS, "generated reports: run or benchmarks")):
        grouped = sub.add_parser(group, help=text).add_subparsers(dest="which", required=True, metavar="WHICH")
        for name, (target, help_text) in table.items():
            grouped.add_parser(name, help=help_text, add_help=False).set_defaults(target=target,
                                                                                   prog=f"f2llm {group} {name}")
    check = sub.add_parser("check", help="the setup check: one line per requirement, PASS or FAIL with the fix")
    check.add_argument("--json", action="store_true", help="also print the environment report as JSON")
    check.set_defaults(func=_check)
    embed = sub.add_parser("embed", help="embed texts and print their cosine similarities")
    embed.add_argument("texts", nargs="+")
    embed.add_argument("--model", default="smollm2-135m", help="smollm2-135m, tiny-qwen3, a hub id or a folder")
    embed.add_argument("--num-layers", type=int, default=0, help="keep only the first k layers (0: all)")
    embed.add_argument("--instruction", default=None, help="query instruction (documents get none)")
    embed.set_defaults(func=_embed)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    target = getattr(args, "target", None)
    if target is not None:
        return _runner(target)(rest, prog=args.prog)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
