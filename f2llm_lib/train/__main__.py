"""``python -m f2llm_lib.train --config cfg.yaml [--resume] [key=value ...]``; the same under accelerate launch."""

import argparse
import json
import sys

import yaml

from .config import ConfigError, TrainConfig
from .trainer import train


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="F2LLM single-stage finetuning")
    parser.add_argument("--config", required=True)
    parser.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint")
    parser.add_argument("--no-export", action="store_true")
    parser.add_argument("overrides", nargs="*", help="key=value pairs overriding the config (YAML values)")
    args = parser.parse_args(argv)
    try:
        overrides = {}
        for item in args.overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"override {item!r} must look like key=value")
            overrides[key] = yaml.safe_load(value)
        config = TrainConfig.from_yaml(args.config, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from ..data.tokenized import TokenizedDataError
    from ..embedder.backbones import BackboneError
    from ..embedder.tokenization import TokenizerMismatchError
    from .checkpoints import RunFolderError
    from .guard import TrainingDiverged

    try:
        result = train(config, resume=args.resume, export=not args.no_export)
    except (RunFolderError, TokenizedDataError, TokenizerMismatchError, BackboneError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"error: training diverged: {exc}", file=sys.stderr)
        return 3
    history = result["history"]
    print(json.dumps({"steps": result["steps"], "final_loss": result["final_loss"], "precision": result["precision"],
                      "final_loss_window": min(len(history), 10),
                      "last_batch_loss": history[-1]["loss"] if history else None, "export": result.get("export"),
                      "interrupted": result.get("interrupted")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
