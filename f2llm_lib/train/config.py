"""Training configuration: plain data in YAML; unknown keys and wrong types are errors naming the key."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A config file names an unknown key or gives a value of the wrong type."""


@dataclass
class TrainConfig:
    model: str = "smollm2-135m"  # smollm2-135m, tiny-qwen3, a hub id or a local folder
    num_layers: int = 0  # keep only the first k decoder layers (0: all)
    data_dir: str = "runs/data/pycode/tokenized"  # output of the data pipeline (corpus.parquet, queries/)
    output_dir: str = "runs/train"
    max_steps: int = 100  # optimizer steps (and the length of the LR schedule); the loader cycles epochs as needed
    stop_after: int = 0  # stop after this many steps of the same schedule (0: run to max_steps); for comparisons
    per_device_batch: int = 8  # queries per process per micro-batch (F2LLM: 16)
    num_negatives: int = 7  # hard negatives sampled per query from the stored ones (F2LLM: 7 retrieval)
    clustering_negatives: int = 0  # negatives per clustering query (F2LLM-v2: 9; 0: num_negatives); classification: 1
    sampling: str = "per_query"  # per_query, or released: F2LLM's fixed dataset weights + one negative draw per batch
    padding: str = "sorted"  # sorted: texts run in groups of similar length; single: one pad length (F2LLM's collate)
    max_padding: float = 0.05  # sorted: the fewest groups that waste at most this fraction of the tokens run
    grad_accum: int = 1
    lr: float = 2e-5  # F2LLM-4B: 8e-6
    min_lr: float = 1e-7
    warmup_steps: int = 10
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    grad_clip: float = 1.0
    temperature: float = 0.05
    mrl: bool = False  # F2LLM-v2 Matryoshka levels
    loss_impl: str = "auto"
    stop_grad_gather: bool = False  # True reproduces the released code's non-differentiable gather
    mixed_precision: str = "no"  # no, bf16, fp16 (GPU)
    gradient_checkpointing: bool = False
    max_length: int = 0  # tokens per text, EOS last (F2LLM: 1024); at most the data's; 0: the data's own
    val_fraction: float = 0.01
    val_batches: int = 8  # validation batches per dataset at each evaluation (0: every held-out row)
    eval_every: int = 50
    save_every: int = 50
    log_every: int = 1
    seed: int = 0
    divergence_guard: bool = True  # stop on a non-finite loss or collapsed embeddings (see train/guard.py)
    teacher: str = ""  # distillation teacher (F2LLM-v2): minilm (offline), a sentence-transformers id or folder
    distill_weight: float = 1.0  # weight of the distillation term (F2LLM-v2: 1.0)
    distill_loss: str = "mse"  # mse (F2LLM-v2: student's prefix vs teacher) or kl (batch similarity distributions)
    lora_rank: int = 0  # LoRA adapters of this rank on lora_targets instead of full finetuning (0: off)
    lora_alpha: float = 32.0  # LoRA scaling numerator (scale = alpha / rank)
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"  # attention and MLP projections
    allow_pickled_checkpoints: bool = False  # resume DeepSpeed checkpoints (DeepSpeed unpickles them): yours only

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict | None = None) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file; pass --config with a YAML file of training keys")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:  # includes tags such as !!python/object, which safe_load refuses
            where = getattr(exc, "problem_mark", None)
            line = f" (line {where.line + 1})" if where is not None else ""
            raise ConfigError(f"{path}{line}: not plain YAML: {str(exc).splitlines()[0]}; use plain keys and "
                              "values (no tags)") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values")
        return cls.from_dict({**data, **(overrides or {})}, source=str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> TrainConfig:
        known = {f.name: f for f in fields(cls)}
        for key, value in data.items():
            if key not in known:
                raise ConfigError(f"{source}: unknown key {key!r}; known keys: {', '.join(sorted(known))}")
            expected = type(known[key].default)
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                data[key] = float(value)
            elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ConfigError(f"{source}: key {key!r} must be {expected.__name__}, got {type(value).__name__}")
        config = cls(**data)
        if config.mixed_precision not in ("no", "bf16", "fp16"):
            raise ConfigError(f"{source}: mixed_precision must be no, bf16 or fp16")
        if config.sampling not in ("per_query", "released"):
            raise ConfigError(f"{source}: sampling must be per_query or released, got {config.sampling!r}")
        if config.distill_loss not in ("mse", "kl"):
            raise ConfigError(f"{source}: distill_loss must be mse or kl, got {config.distill_loss!r}")
        if config.padding not in ("sorted", "single"):
            raise ConfigError(f"{source}: padding must be sorted or single, got {config.padding!r}")
        config._check_ranges(source)
        return config

    def _check_ranges(self, source: str) -> None:
        """Values that would train nothing, or garbage, are errors now, before any model loads."""
        rules = [
            (self.max_steps >= 1, "max_steps", "at least 1 (0 steps would export the untrained backbone)"),
            (self.per_device_batch >= 1, "per_device_batch", "at least 1"),
            (self.grad_accum >= 1, "grad_accum", "at least 1"),
            (self.num_negatives >= 0, "num_negatives", "0 or more"),
            (self.clustering_negatives >= 0, "clustering_negatives", "0 or more"),
            (self.lr > 0, "lr", "positive"),
            (0 <= self.min_lr <= self.lr, "min_lr", f"between 0 and lr ({self.lr})"),
            (self.warmup_steps >= 0, "warmup_steps", "0 or more"),
            (self.temperature > 0, "temperature", "positive (logits are cosine / temperature)"),
            (0 <= self.val_fraction < 1, "val_fraction", "in [0, 1)"),
            (0 < self.max_padding < 1, "max_padding", "in (0, 1)"),
            (self.distill_weight >= 0, "distill_weight", "0 or more"),
            (self.lora_rank >= 0 and self.lora_alpha > 0, "lora_rank/lora_alpha", "rank >= 0 (0: off), alpha > 0"),
            (self.max_length == 0 or self.max_length >= 2, "max_length", "0 (the data's) or at least 2 (text + EOS)"),
            (self.grad_clip >= 0, "grad_clip", "0 (off) or positive"),
            (self.eval_every >= 1 and self.save_every >= 1 and self.log_every >= 1, "eval_every/save_every/log_every",
             "at least 1"),
            (self.stop_after >= 0, "stop_after", "0 (off) or positive"),
            (self.num_layers >= 0, "num_layers", "0 (all) or positive"),
            (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1/beta2", "in [0, 1)"),
        ]
        for ok, key, expected in rules:
            if not ok:
                value = ", ".join(str(getattr(self, k)) for k in key.split("/"))
                raise ConfigError(f"{source}: {key} must be {expected}, got {value}")
