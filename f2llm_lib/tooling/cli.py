"""The ``f2llm`` command line: the same library calls the notebooks make."""

from __future__ import annotations

import argparse
import json
import sys


def _check(_: argparse.Namespace) -> int:
    from .env_check import environment_report

    report = environment_report()
    print(json.dumps(report, indent=2))
    return 0 if report["smollm2_gguf"] else 1


def _embed(args: argparse.Namespace) -> int:
    from ..embedder.backbones import load_backbone
    from ..embedder.model import F2LLMEncoder

    model, tokenizer = load_backbone(args.model, num_layers=args.num_layers or None)
    embeddings = F2LLMEncoder(model, tokenizer).encode(args.texts, instruction=args.instruction)
    print(json.dumps({"dim": int(embeddings.shape[1]), "cosine": (embeddings @ embeddings.T).round(4).tolist()}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="f2llm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="print the environment report").set_defaults(func=_check)
    embed = sub.add_parser("embed", help="embed texts and print their cosine similarities")
    embed.add_argument("texts", nargs="+")
    embed.add_argument("--model", default="smollm2-135m", help="smollm2-135m, tiny-qwen3, a hub id or a folder")
    embed.add_argument("--num-layers", type=int, default=0, help="keep only the first k layers (0: all)")
    embed.add_argument("--instruction", default=None, help="query instruction (documents get none)")
    embed.set_defaults(func=_embed)
    notebooks = sub.add_parser("notebooks", help="run notebooks headless (same as ci/run_notebooks.py)",
                               add_help=False)
    notebooks.set_defaults(func=None)
    args, rest = parser.parse_known_args(argv)
    if args.command == "notebooks":
        from .notebook_runner import main as run_notebooks

        return run_notebooks(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
