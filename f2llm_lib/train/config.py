"""Training configuration: plain data in YAML; unknown keys and wrong types are errors naming the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from ..typed import from_mapping, load_yaml, rule

# Choices defined once: the loader checks its own arguments against the same types.
Sampling = Literal["per_query", "released"]
Padding = Literal["sorted", "single"]


class ConfigError(ValueError):
    """A config file names an unknown key or gives a value of the wrong type."""


@dataclass
class TrainConfig:
    # Names other trainers (transformers, sentence-transformers, F2LLM's released arguments) give these settings.
    KEY_ALIASES: ClassVar[dict[str, str]] = {
        "learning_rate": "lr", "min_learning_rate": "min_lr", "batch_size": "per_device_batch",
        "per_device_train_batch_size": "per_device_batch", "train_batch_size": "per_device_batch",
        "gradient_accumulation_steps": "grad_accum", "warmup": "warmup_steps", "max_seq_length": "max_length",
        "max_seq_len": "max_length", "steps": "max_steps", "tau": "temperature", "model_path": "model",
        "bf16": "mixed_precision", "train_data_path": "data_dir", "seed_value": "seed"}
    model: str = "smollm2-135m"  # smollm2-135m, tiny-qwen3, a hub id or a local folder
    # keep only the first k decoder layers (0: all)
    num_layers: int = field(default=0, metadata=rule(lambda v: v >= 0, "0 (all) or positive"))
    data_dir: str = "runs/data/pycode/tokenized"  # output of the data pipeline (corpus.parquet, queries/)
    output_dir: str = "runs/train"
    # optimizer steps (and the length of the LR schedule); the loader cycles epochs as needed
    max_steps: int = field(default=100, metadata=rule(
        lambda v: v >= 1, "at least 1 (0 steps would export the untrained backbone)"))
    # stop after this many steps of the same schedule (0: run to max_steps); for comparisons
    stop_after: int = field(default=0, metadata=rule(lambda v: v >= 0, "0 (off) or positive"))
    # queries per process per micro-batch (F2LLM: 16)
    per_device_batch: int = field(default=8, metadata=rule(lambda v: v >= 1, "at least 1"))
    # hard negatives sampled per query from the stored ones (F2LLM: 7 retrieval)
    num_negatives: int = field(default=7, metadata=rule(lambda v: v >= 0, "0 or more"))
    # negatives per clustering query (F2LLM-v2: 9; 0: num_negatives); classification: 1
    clustering_negatives: int = field(default=0, metadata=rule(lambda v: v >= 0, "0 or more"))
    # per_query, or released: F2LLM's fixed dataset weights + one negative draw per batch (as v1's and v2's collate:
    # k positions drawn once and shared by the batch's queries). Either way the k is per task type: num_negatives
    # for retrieval (7 of the 24 stored), clustering_negatives for clustering (v2: 9), the stored one for
    # classification; F2LLM-v2's layout (build.kind f2llm_v2_tokenized) trains with the same rules
    sampling: Sampling = "per_query"
    # sorted: texts run in groups of similar length; single: one pad length (F2LLM's collate)
    padding: Padding = "sorted"
    # sorted: the fewest groups that waste at most this fraction of the tokens run
    max_padding: float = field(default=0.05, metadata=rule(lambda v: 0 < v < 1, "in (0, 1)"))
    grad_accum: int = field(default=1, metadata=rule(lambda v: v >= 1, "at least 1"))
    # F2LLM-4B: 8e-6
    lr: float = field(default=2e-5, metadata=rule(lambda v: v > 0, "positive"))
    min_lr: float = 1e-7
    warmup_steps: int = field(default=10, metadata=rule(lambda v: v >= 0, "0 or more"))
    weight_decay: float = field(default=0.01, metadata=rule(lambda v: v >= 0, "0 or more"))
    beta1: float = field(default=0.9, metadata=rule(lambda v: 0 <= v < 1, "in [0, 1)"))
    beta2: float = field(default=0.98, metadata=rule(lambda v: 0 <= v < 1, "in [0, 1)"))
    grad_clip: float = field(default=1.0, metadata=rule(lambda v: v >= 0, "0 (off) or positive"))
    temperature: float = field(default=0.05, metadata=rule(
        lambda v: v > 0, "positive (logits are cosine / temperature)"))
    mrl: bool = False  # F2LLM-v2 Matryoshka levels
    loss_impl: Literal["auto", "reference", "chunked", "triton"] = "auto"
    # off (null) in F2LLM; a cosine margin: in-batch keys scoring above the positive + margin are masked as likely
    # false negatives (Qwen3-Embedding's rule); chunked or reference loss; each step logs how many
    false_negative_margin: float | None = field(default=None, metadata=rule(lambda v: v >= 0, "0 or more"))
    stop_grad_gather: bool = False  # True reproduces the released code's non-differentiable gather
    # no, bf16, fp16 (GPU); unset (null): the launcher's choice (`accelerate launch --mixed_precision`, its config
    # file), so that `accelerate launch --config_file ci/accelerate/gpu_8_zero2.yaml` trains in that file's bf16
    mixed_precision: Literal["no", "bf16", "fp16"] | None = None
    gradient_checkpointing: bool = False
    # gradient caching (GradCache): embed without a graph in pieces, loss and its gradient over the whole batch, then
    # each piece again with its cached gradient; memory of one piece's activations, for F2LLM's batch on one device
    grad_cache: bool = False
    grad_cache_chunk: int = field(default=64, metadata=rule(lambda v: v >= 1, "at least 1 (texts per piece)"))
    # tensorboard: event files in <output_dir>/f2llm/ (`tensorboard --logdir <output_dir>`); none: only the
    # metrics.jsonl every run writes
    report_to: Literal["tensorboard", "none"] = "tensorboard"
    # tokens per text, EOS last (F2LLM: 1024); at most the data's; 0: the data's own
    max_length: int = field(default=0, metadata=rule(
        lambda v: v == 0 or v >= 2, "0 (the data's) or at least 2 (text + EOS)"))
    val_fraction: float = field(default=0.01, metadata=rule(lambda v: 0 <= v < 1, "in [0, 1)"))
    val_batches: int = 8  # validation batches per dataset at each evaluation (0: every held-out row)
    eval_every: int = field(default=50, metadata=rule(lambda v: v >= 1, "at least 1"))
    save_every: int = field(default=50, metadata=rule(lambda v: v >= 1, "at least 1"))
    log_every: int = field(default=1, metadata=rule(lambda v: v >= 1, "at least 1"))
    seed: int = field(default=0, metadata=rule(lambda v: v >= 0, "0 or more"))
    divergence_guard: bool = True  # stop on a non-finite loss or collapsed embeddings (see train/guard.py)
    teacher: str = ""  # distillation teacher (F2LLM-v2): minilm (offline), a sentence-transformers id or folder
    # weight of the distillation term (F2LLM-v2: 1.0)
    distill_weight: float = field(default=1.0, metadata=rule(lambda v: v >= 0, "0 or more"))
    # mse (F2LLM-v2: student's prefix vs teacher) or kl (batch similarity distributions)
    distill_loss: Literal["mse", "kl"] = "mse"
    # LoRA adapters of this rank on lora_targets instead of full finetuning (0: off)
    lora_rank: int = field(default=0, metadata=rule(lambda v: v >= 0, "0 (off) or more"))
    # LoRA scaling numerator (scale = alpha / rank)
    lora_alpha: float = field(default=32.0, metadata=rule(lambda v: v > 0, "positive"))
    lora_targets: str = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"  # attention and MLP projections
    # complete checkpoints kept (the newest; 0: all): each holds the optimizer state, which fills a disk at F2LLM's
    # scale; the final export is never removed, and three keep a fallback when the newest is damaged
    keep_checkpoints: int = field(default=3, metadata=rule(lambda v: v >= 0, "0 (keep all) or more"))
    allow_pickled_checkpoints: bool = False  # resume DeepSpeed checkpoints (DeepSpeed unpickles them): yours only

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict | None = None) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file; pass --config with a YAML file of training keys")
        data = load_yaml(path.read_text(encoding="utf-8"), str(path), ConfigError) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of keys to values")
        return cls.from_dict({**data, **(overrides or {})}, source=str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> TrainConfig:
        """A config from a mapping: unknown keys, wrong types and values that would train nothing (or garbage) are
        errors naming the key, before any model loads."""
        return from_mapping(cls, data, source, ConfigError)

    def cross_checks(self):
        yield 0 <= self.min_lr <= self.lr, "min_lr", f"between 0 and lr ({self.lr})"
