"""The trainer: one script for one process or many (``accelerate launch -m f2llm_lib.train --config ...``).

AdamW (0.9, 0.98), weight decay 0.01, linear warmup then cosine down to ``min_lr``, gradient clipping 1.0,
gradient accumulation, optional mixed precision and gradient checkpointing, the loss issue's entry point,
periodic validation, ``save_state`` checkpoints (model, optimizer, scheduler, RNG, loader position), TensorBoard
scalars plus a ``metrics.jsonl`` the notebooks plot. ``resume=True`` continues exactly from the last checkpoint.

Loss scaling: each rank's loss is the mean over its local queries (keys gathered from every rank, gradients summed
back to their owners). DDP averages parameter gradients over ranks, so N processes with B queries each follow the
gradient of one process with N x B queries.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from tqdm.auto import tqdm

from ..data.tokenized import TokenizedDataError
from ..embedder.backbones import load_backbone, load_tokenizer
from ..embedder.model import F2LLMEncoder
from ..losses import contrastive_loss
from ..ownership import output_lock
from .checkpoints import (
    COMPLETE,
    LOADER_STATE,
    RunFolderError,
    prepare_output_dir,
    prune_checkpoints,
    truncate_metrics,
    usable_checkpoints,
)
from .config import ConfigError, TrainConfig
from .distill import TeacherEmbeddings, distill_loss, teacher_cache
from .grad_cache import cached_step
from .guard import DivergenceGuard, batch_statistics
from .loader import Batch, MultitaskLoader


def cosine_with_floor(config: TrainConfig):
    """LR multiplier: linear warmup, then cosine from lr down to min_lr (never below)."""
    floor = config.min_lr / config.lr

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = min(1.0, (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def batch_loss(encoder, batch: Batch, config: TrainConfig, teacher: TeacherEmbeddings | None = None,
               loss_stats: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, the batch's embeddings) for one micro-batch: F2LLM's contrastive loss, plus the distillation term
    when a teacher is given. ``loss_stats`` receives the loss's counters (in-batch keys masked as false negatives)."""
    embeddings = encoder(chunks=batch.chunks)
    return loss_from_embeddings(batch, embeddings, config, teacher, loss_stats), embeddings


def loss_from_embeddings(batch: Batch, embeddings: torch.Tensor, config: TrainConfig,
                         teacher: TeacherEmbeddings | None = None, loss_stats: dict | None = None) -> torch.Tensor:
    """A micro-batch's loss from its embeddings (batch order): contrastive, plus distillation with a teacher."""
    loss = batch_contrastive_loss(batch, embeddings, config, stats=loss_stats)
    if teacher is not None and config.distill_weight > 0:
        targets = teacher.lookup(batch.dataset, batch.query_rows, batch.doc_ids)
        loss = loss + config.distill_weight * distill_loss(embeddings, targets, config.distill_loss,
                                                           config.temperature)
    return loss


def batch_contrastive_loss(batch: Batch, embeddings: torch.Tensor, config: TrainConfig,
                           gather: bool = True, stats: dict | None = None) -> torch.Tensor:
    """F2LLM's loss of one batch through the loss's one entry point: the in-batch term for retrieval datasets only,
    MRL levels when configured. ``gather=False`` keeps the keys local (validation: every rank holds the same rows)."""
    queries, positives, negatives = batch.split(embeddings)
    return contrastive_loss(queries, positives, negatives, in_batch=batch.in_batch, temperature=config.temperature,
                            mrl_dims="f2llm_v2" if config.mrl else None, impl=config.loss_impl,
                            stop_grad_gather=config.stop_grad_gather, gather=gather,
                            false_negative_margin=config.false_negative_margin, stats=stats)


SMOOTHING = 10  # steps averaged for the progress bar's and the summary's loss (one batch's loss is noisy)


def add_lora(model, config: TrainConfig):
    """LoRA adapters (peft) on the attention and MLP projections; only they train."""
    from peft import LoraConfig, get_peft_model

    targets = [t.strip() for t in config.lora_targets.split(",") if t.strip()]
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in present]
    if missing:
        raise ConfigError(f"lora_targets {missing} are not modules of {config.model} (it has e.g. "
                          f"{sorted(n for n in present if n.endswith('proj'))[:8]}); name its projection modules")
    return get_peft_model(model, LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                                            target_modules=targets))


def smoothed_loss(history: list[dict], window: int = SMOOTHING) -> float | None:
    """The mean loss of the last ``window`` steps (each step's loss is one dataset's batch: noisy)."""
    recent = [h["loss"] for h in history[-window:]]
    return sum(recent) / len(recent) if recent else None


def configure_deepspeed(accelerator: Accelerator, config: TrainConfig) -> dict | None:
    """Under DeepSpeed (e.g. ``ci/accelerate/gpu_8_zero2.yaml``), fill what accelerate cannot infer, before
    ``prepare``, as the released F2LLM code does: we prepare no DataLoader, so accelerate cannot resolve the "auto"
    micro batch size and refuses to start. Accumulation and clipping follow our config so that DeepSpeed's engine
    (which then does both) agrees with the loop. Returns the DeepSpeed config dict, or None without DeepSpeed."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return None
    ds_config = plugin.deepspeed_config
    ds_config["train_micro_batch_size_per_gpu"] = config.per_device_batch
    ds_config["gradient_accumulation_steps"] = config.grad_accum
    ds_config["gradient_clipping"] = config.grad_clip
    return ds_config


def _fix_cpu_deepspeed_layout(accelerator: Accelerator) -> None:
    """DeepSpeed on CPUs (its gloo backend; our tests) starts the process group itself, but accelerate 1.15 then
    records every process as rank 0 of 1, so each would load the same slice of the batch and all would write as the
    main process. Take the layout from the process group DeepSpeed started (on GPUs accelerate already agrees)."""
    import torch.distributed as dist

    if accelerator.state.deepspeed_plugin is None or not dist.is_initialized():
        return
    world_size, rank = dist.get_world_size(), dist.get_rank()
    if accelerator.num_processes == world_size and accelerator.process_index == rank:
        return
    from accelerate.state import AcceleratorState, PartialState

    layout = {"num_processes": world_size, "process_index": rank,
              "local_process_index": int(os.environ.get("LOCAL_RANK", rank))}
    for shared in (PartialState._shared_state, AcceleratorState._shared_state):
        shared.update(layout)


def train(config: TrainConfig, resume: bool = False, export: bool = True,
          on_step_end: Callable[[int], None] | None = None) -> dict:
    """Train ``config`` in this process (one of several under ``accelerate launch``); return the history, the
    smoothed final loss and the export's path. ``on_step_end(step)`` runs after each step is logged and saved."""
    output_dir = Path(config.output_dir)
    accelerator, deepspeed = start_accelerator(config)
    if deepspeed and config.grad_cache:  # DeepSpeed's engine takes one backward per micro-batch, not one per piece
        raise ConfigError("grad_cache: true does not run under DeepSpeed (its engine counts each backward as a "
                          "micro-batch); launch without the DeepSpeed config (DDP), or set grad_cache: false")
    with contextlib.ExitStack() as lock:
        refused = None
        if accelerator.is_main_process:  # one trainer per output_dir: the main process holds its lock
            try:
                lock.enter_context(output_lock(output_dir, "f2llm train", RunFolderError))
            except RunFolderError as exc:
                refused = str(exc)
        refused = broadcast_object_list([refused])[0]  # every rank stops, not only the main one
        if refused:
            accelerator.end_training()
            raise RunFolderError(refused)
        return _train_locked(accelerator, deepspeed, config, output_dir, resume, export, on_step_end)


class StopRequest:
    """SIGTERM (what a scheduler sends before preemption) as a request: the current step finishes, a checkpoint is
    saved, and the run returns (``interrupted`` in its result; ``python -m f2llm_lib.train`` exits 0)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.previous = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def agreed(self, accelerator: Accelerator) -> bool:
        """Whether any rank was asked to stop (all ranks stop at the same step, or their collectives would hang)."""
        if accelerator.num_processes == 1:
            return self.signal is not None
        flag = torch.tensor(1.0 if self.signal is not None else 0.0, device=accelerator.device)
        return accelerator.reduce(flag, reduction="sum").item() > 0


def _train_locked(accelerator: Accelerator, deepspeed: bool, config: TrainConfig, output_dir: Path, resume: bool,
                  export: bool, on_step_end: Callable[[int], None] | None) -> dict:
    prepare_output_dir(output_dir, config, resume, accelerator.is_main_process)
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        raise ConfigError("mixed_precision fp16 on a CPU: fp16 autocast needs a GPU, and the run would train in "
                          "fp32 while its settings say fp16. Use bf16 or no on a CPU")
    if config.warmup_steps >= config.max_steps:
        accelerator.print(f"[train] warning: warmup_steps {config.warmup_steps} >= max_steps {config.max_steps}: the "
                          f"learning rate never reaches lr {config.lr} (it ends at "
                          f"{config.lr * config.max_steps / max(config.warmup_steps, 1):.2g}); lower warmup_steps")
    set_seed(config.seed)
    loader, tokenizer = open_data(config, accelerator)  # memory maps: instant; checked before any weights load
    encoder = build_encoder(config, loader, tokenizer)
    teacher = load_teacher(config, accelerator, tokenizer)
    optimizer, scheduler = build_optimizer(config, encoder)
    configure_deepspeed(accelerator, config)
    encoder, optimizer, scheduler = accelerator.prepare(encoder, optimizer, scheduler)
    start = resume_from_checkpoint(accelerator, output_dir, loader, config, deepspeed) if resume else 0
    if config.report_to != "none":  # TensorBoard event files under <output_dir>/f2llm/; metrics.jsonl either way
        settings = {k: v for k, v in vars(config).items() if v is not None}  # TensorBoard's hparams take no None
        accelerator.init_trackers("f2llm", config={**settings, "precision": accelerator.mixed_precision})
    with StopRequest() as stop:
        history = run_steps(accelerator, encoder, optimizer, scheduler, loader, config, teacher, start, on_step_end,
                            stop)
    result = {"steps": len(history) + start, "history": history, "final_loss": smoothed_loss(history),
              "precision": accelerator.mixed_precision,  # what this run trained in, whoever chose it
              "interrupted": "SIGTERM" if stop.signal is not None else None}
    if export and accelerator.is_main_process and not result["interrupted"]:
        result["export"] = str(export_final(accelerator, encoder, config, output_dir / "final"))
    accelerator.wait_for_everyone()
    accelerator.end_training()  # last: it also tears the process group down
    return result


def start_accelerator(config: TrainConfig) -> tuple[Accelerator, bool]:
    """The accelerator and whether DeepSpeed runs. ``cpu=True`` on a machine without CUDA is what makes accelerate
    start gloo for several CPU processes; not under DeepSpeed, which it would silently switch off (DeepSpeed's CPU
    accelerator starts gloo by itself)."""
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")  # what `accelerate launch` (or its config) asked for
    accelerator = Accelerator(mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.grad_accum,
                              log_with=None if config.report_to == "none" else config.report_to,
                              project_dir=str(config.output_dir),
                              cpu=not torch.cuda.is_available() and not deepspeed,
                              step_scheduler_with_optimizer=False)  # we step it once per optimizer step
    _fix_cpu_deepspeed_layout(accelerator)
    if config.mixed_precision is not None and launched and launched != config.mixed_precision:
        accelerator.print(f"[train] mixed_precision: the config's {config.mixed_precision!r} overrides the launcher's "
                          f"{launched!r} (leave it unset to train as launched)")
    return accelerator, deepspeed


def open_data(config: TrainConfig, accelerator: Accelerator) -> tuple[MultitaskLoader, object]:
    """The loader over the tokenized data and the backbone's tokenizer, refused when the data was tokenized with
    another tokenizer."""
    tokenizer = load_tokenizer(config.model)
    loader = MultitaskLoader.from_config(config, tokenizer, accelerator.process_index, accelerator.num_processes)
    loader.data.check_tokenizer(tokenizer, config.model)
    return loader, tokenizer


def build_encoder(config: TrainConfig, loader: MultitaskLoader, tokenizer) -> F2LLMEncoder:
    """The backbone (pruned, with LoRA adapters and gradient checkpointing when asked) as an encoder, in train mode."""
    model, tokenizer = load_backbone(config.model, num_layers=config.num_layers or None, seed=config.seed)
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions and loader.max_length > positions:
        raise ConfigError(f"texts of up to {loader.max_length} tokens ({config.data_dir}, max_length), but "
                          f"{config.model} has {positions} positions: the rest would be garbage or an index error. "
                          f"Set max_length: {positions} (or less), or re-tokenize with --max-length {positions}")
    rows, ids = model.get_input_embeddings().num_embeddings, loader.data.tokenizer["vocab_size"]
    if rows < ids:
        raise TokenizedDataError(f"{config.model} has {rows} embedding rows, fewer than the {ids} token ids its "
                                 f"tokenizer (and the data in {config.data_dir}) can use: the model and tokenizer "
                                 "files do not belong together")
    if config.lora_rank:
        model = add_lora(model, config)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    return F2LLMEncoder(model, tokenizer, max_length=loader.max_length)


def load_teacher(config: TrainConfig, accelerator: Accelerator, tokenizer) -> TeacherEmbeddings | None:
    """The distillation teacher's cached embeddings (computed once, by the main process), or None."""
    if not config.teacher:
        return None
    with accelerator.main_process_first():
        folder = teacher_cache(config.data_dir, config.teacher, tokenizer, log=accelerator.print,
                               show_progress=accelerator.is_main_process)
    return TeacherEmbeddings(folder)


def build_optimizer(config: TrainConfig, encoder: F2LLMEncoder):
    """AdamW with F2LLM's betas and weight decay; linear warmup, then cosine down to ``min_lr``."""
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=config.lr, betas=(config.beta1, config.beta2),
                                  weight_decay=config.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_floor(config))


def run_steps(accelerator: Accelerator, encoder, optimizer, scheduler, loader: MultitaskLoader,
              config: TrainConfig, teacher: TeacherEmbeddings | None, start: int,
              on_step_end: Callable[[int], None] | None, stop: StopRequest | None = None) -> list[dict]:
    """The loop: one optimizer step at a time; validation, logging, the divergence guard and checkpoints as the
    config says. Returns one record per step."""
    output_dir = Path(config.output_dir)
    last = min(config.max_steps, config.stop_after) if config.stop_after else config.max_steps
    bar = tqdm(range(start, last), desc="train", disable=not accelerator.is_main_process, initial=start, total=last)
    history: list[dict] = []
    guard = DivergenceGuard(config.divergence_guard)
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(accelerator.device)
    for step in bar:
        record, batch_stats = optimizer_step(accelerator, encoder, optimizer, scheduler, loader, config, teacher)
        record["step"] = step + 1
        if (step + 1) % config.eval_every == 0 or step + 1 == last:
            record["val"] = validate(encoder, loader, config)
        history.append(record)
        if accelerator.is_main_process and ((step + 1) % config.log_every == 0 or "val" in record):
            log_step(accelerator, record, output_dir / "metrics.jsonl")
            bar.set_postfix(loss=f"{record['loss']:.3f}", smoothed=f"{smoothed_loss(history):.3f}",
                            tok_s=f"{record['tokens_per_second']:.0f}", ds=record["dataset"][:12])
        guard.check(step + 1, record["loss"], batch_stats, record["lr"])  # before saving: the last one stays good
        saved = (step + 1) % config.save_every == 0 or step + 1 == last
        if saved:
            save_checkpoint(accelerator, output_dir, step + 1, loader, config.keep_checkpoints)
        if on_step_end is not None:
            on_step_end(step + 1)
        if stop is not None and stop.agreed(accelerator):
            if not saved:
                save_checkpoint(accelerator, output_dir, step + 1, loader, config.keep_checkpoints)
            accelerator.print(f"[train] SIGTERM: stopped after step {step + 1}, checkpoint saved "
                              f"({output_dir / 'checkpoints' / f'step_{step + 1}'}); continue with --resume")
            break
    return history


def optimizer_step(accelerator: Accelerator, encoder, optimizer, scheduler, loader: MultitaskLoader,
                   config: TrainConfig, teacher: TeacherEmbeddings | None) -> tuple[dict, torch.Tensor]:
    """``grad_accum`` micro-batches of forward, loss, backward, then (clipped) optimizer and scheduler steps.
    Returns the step's record (loss and throughput over every rank) and its embedding statistics."""
    tic = time.perf_counter()
    tokens = padded = texts = longest = 0
    losses, stats, masked = [], [], 0
    for _ in range(config.grad_accum):
        batch = loader.next_batch()
        tokens, padded = tokens + batch.tokens, padded + batch.padded_tokens
        texts, longest = texts + len(batch.texts), max(longest, int(batch.lengths.max()))
        with accelerator.accumulate(encoder):
            loss_stats: dict = {}
            if config.grad_cache:  # forward, loss and backward in pieces: see train/grad_cache.py
                loss, embeddings = cached_step(accelerator, encoder, batch, config.grad_cache_chunk, functools.partial(
                    loss_from_embeddings, batch, config=config, teacher=teacher, loss_stats=loss_stats))
            else:
                loss, embeddings = batch_loss(encoder, batch, config, teacher, loss_stats)
                accelerator.backward(loss)
            masked += loss_stats.get("masked", 0)
            stats.append(batch_statistics(embeddings))
            if accelerator.sync_gradients and config.grad_clip > 0:
                accelerator.clip_grad_norm_(encoder.parameters(), config.grad_clip)
            optimizer.step()
            if accelerator.sync_gradients:
                scheduler.step()
            optimizer.zero_grad()
        losses.append(loss.detach())
    seconds = time.perf_counter() - tic
    mean_loss = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
    batch_stats = accelerator.reduce(torch.stack(stats).mean(0), reduction="mean").cpu()
    total_tokens = accelerator.reduce(torch.tensor(float(tokens), device=accelerator.device), "sum").item()
    record = {"loss": mean_loss, "dataset": batch.dataset, "lr": scheduler.get_last_lr()[0],
              "tokens_per_second": total_tokens / seconds, "padding_fraction": 1 - tokens / padded,
              "step_seconds": seconds, "texts": texts, "longest_text": longest}
    if config.false_negative_margin is not None:  # in-batch keys masked as likely false negatives, all ranks
        record["false_negatives_masked"] = int(accelerator.reduce(
            torch.tensor(float(masked), device=accelerator.device), "sum").item())
    if accelerator.device.type == "cuda":  # this rank's peak since training started (weights, optimizer, step)
        record["peak_memory_mb"] = torch.cuda.max_memory_allocated(accelerator.device) / 2**20
    return record, batch_stats


def log_step(accelerator: Accelerator, record: dict, metrics_path: Path) -> None:
    """TensorBoard scalars (the loss also per dataset: datasets differ in scale) and a line of metrics.jsonl."""
    scalars = {k: v for k, v in record.items() if isinstance(v, float)}
    scalars[f"loss/{record['dataset']}"] = record["loss"]
    scalars.update({f"val/{k}": v for k, v in record.get("val", {}).items()})
    accelerator.log(scalars, step=record["step"])
    with metrics_path.open("a") as handle:
        handle.write(json.dumps({"step": record["step"], **{k: v for k, v in record.items() if k != "step"}}) + "\n")


def export_final(accelerator: Accelerator, encoder, config: TrainConfig, out_dir: Path) -> Path:
    """The trained encoder as a sentence-transformers folder (LoRA adapters merged into the weights first)."""
    from ..embedder.export import export_sentence_transformers

    final = accelerator.unwrap_model(encoder)
    if config.lora_rank:
        final = F2LLMEncoder(final.backbone.merge_and_unload(), final.tokenizer, final.max_length)
    prompts, training = export_facts(config, final.dim)
    return export_sentence_transformers(final, out_dir, prompts=prompts, training=training)


SETTINGS_IN_CARD = ("max_steps", "per_device_batch", "grad_accum", "num_negatives", "clustering_negatives", "sampling",
                    "lr", "min_lr", "warmup_steps", "weight_decay", "temperature", "mrl", "max_length", "lora_rank",
                    "teacher", "seed")


def export_facts(config: TrainConfig, dim: int) -> tuple[dict[str, str], dict]:
    """The export's prompts (the training data's instructions) and the facts its model card shows."""
    from ..embedder.export import training_data_facts, training_prompts
    from ..losses.api import mrl_levels

    manifest = json.loads((Path(config.data_dir) / "manifest.json").read_text())
    settings = {key: getattr(config, key) for key in SETTINGS_IN_CARD}
    return training_prompts(manifest), {"backbone": config.model, **training_data_facts(manifest),
                                        "settings": settings, "mrl_dims": mrl_levels(dim) if config.mrl else None}


def resume_from_checkpoint(accelerator: Accelerator, output_dir: Path, loader: MultitaskLoader, config: TrainConfig,
                           deepspeed: bool) -> int:
    """Load the newest checkpoint that loads; return its step. A corrupt one (a file cut short, random bytes) is
    skipped, saying which and why, for the one before it; one that would load code is refused (see ``checkpoints``)."""
    for checkpoint in usable_checkpoints(output_dir, deepspeed, accelerator.num_processes, log=accelerator.print):
        try:
            _load_checkpoint(accelerator, checkpoint, loader, config, deepspeed)
        except CorruptCheckpoint as exc:
            accelerator.print(f"[train] skipping {checkpoint}: corrupt ({exc}); falling back to an earlier checkpoint")
            continue
        step = int(checkpoint.name.split("_")[1])
        if accelerator.is_main_process:
            truncate_metrics(output_dir / "metrics.jsonl", step)
        accelerator.print(f"[train] resumed from {checkpoint} at step {step}")
        return step
    raise RunFolderError(f"--resume: every checkpoint in {output_dir / 'checkpoints'} is corrupt (see above); start "
                         "a new run in a new output_dir")


def _pickles_naming_code(checkpoint: Path) -> list[str]:
    """State files that are whole, valid pickles calling Python objects (GLOBAL, REDUCE...): put there on purpose,
    unlike random bytes or a file cut short, which do not parse as a pickle at all."""
    import pickletools
    import zipfile

    found = []
    for path in sorted(checkpoint.iterdir()):
        if not path.is_file() or path.suffix not in (".pkl", ".bin") or zipfile.is_zipfile(path):
            continue
        try:
            opcodes = {op.name for op, _, _ in pickletools.genops(path.read_bytes())}
        except (ValueError, EOFError, UnicodeDecodeError, pickle.UnpicklingError):
            continue  # not a pickle: corrupt, not planted
        if opcodes & {"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD"}:
            found.append(path.name)
    return found


class CorruptCheckpoint(Exception):
    """A checkpoint file that cannot be read as what it should be (cut short, overwritten): not a security issue."""


def _load_checkpoint(accelerator: Accelerator, checkpoint: Path, loader: MultitaskLoader, config: TrainConfig,
                     deepspeed: bool) -> None:
    from safetensors import SafetensorError

    if deepspeed and not config.allow_pickled_checkpoints:
        raise RunFolderError(f"{checkpoint} is a DeepSpeed checkpoint: DeepSpeed loads it with pickle, which can run "
                             "code from the file. Set allow_pickled_checkpoints: true to resume it (only for "
                             "checkpoints you made yourself)")
    foreign = sorted(p.name for p in checkpoint.glob("custom_checkpoint_*"))
    if foreign:  # this trainer registers no custom objects: such a file was put there by something else
        raise RunFolderError(f"{checkpoint}: unexpected {', '.join(foreign)} (this trainer writes no custom "
                             "objects, and their pickles could run code); the checkpoint was altered: resume from "
                             "a checkpoint you made, or delete the file if you know where it came from")
    try:
        if not deepspeed:
            # accelerate loads the RNG states inside a try/except that only logs a failure: a refused (planted)
            # file would pass silently and the run would resume with other random numbers. Check it first, with
            # the same safe loader (weights_only=True, numpy's array types allowed).
            from accelerate.utils.other import load as safe_load

            safe_load(checkpoint / f"random_states_{accelerator.process_index}.pkl")
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / LOADER_STATE).read_text())
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Unsupported global" in text or _pickles_naming_code(checkpoint):  # a pickle that names Python objects
            raise RunFolderError(f"{checkpoint}: a state file holds pickled Python objects, which this trainer "
                                 f"refuses to load (torch.load with weights_only=True): {text.splitlines()[0][:200]}. "
                                 "Was the folder replaced or handed to you? Resume from a checkpoint you made") from exc
        raise CorruptCheckpoint(f"a state file is not a readable tensor file: {text.splitlines()[0][:120]}") from exc
    except (SafetensorError, EOFError, RuntimeError, ValueError, OSError, KeyError) as exc:
        raise CorruptCheckpoint(f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}") from exc
    loader.load_state_dict(state)


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, loader: MultitaskLoader,
                    keep: int = 0) -> None:
    """accelerate's state plus the loader's position, marked complete last; then only the newest ``keep`` complete
    checkpoints stay (0: all), so that a long run does not fill the disk with optimizer states."""
    folder = output_dir / "checkpoints" / f"step_{step}"
    accelerator.save_state(str(folder))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # the loader's position as JSON (the same on every rank), not through accelerate's pickled custom objects
        (folder / LOADER_STATE).write_text(json.dumps(loader.state_dict()))
        (folder / COMPLETE).touch()  # a checkpoint cut short by a crash is never resumed from
        prune_checkpoints(output_dir, keep, log=accelerator.print)


@torch.no_grad()
def validate(encoder, loader: MultitaskLoader, config: TrainConfig) -> dict[str, float]:
    """Per-dataset losses on the held-out rows, each rank on the same rows (so no gather)."""
    was_training = encoder.training
    encoder.eval()
    out = {}
    for batch in loader.validation_batches(config.val_batches):
        out[batch.dataset] = float(batch_contrastive_loss(batch, encoder(chunks=batch.chunks), config, gather=False))
    encoder.train(was_training)
    return out
