"""The run folder: refuse to mix two runs, resume only what can be resumed exactly, and load no code from a file.

- A fresh run refuses an ``output_dir`` that already holds a run (its metrics and checkpoints would mix with the
  new ones, and a later ``--resume`` would continue the old run); ``--resume`` refuses changed settings, listing them
  (the checkpoint's optimizer and schedule would silently win over a new ``lr``).
- Checkpoints are accelerate's ``save_state`` (safetensors model; optimizer, scheduler and RNG states that accelerate
  loads with ``torch.load(weights_only=True)``: tensors and plain containers only) plus the loader's position as JSON.
  No custom pickled object is written or read. A DeepSpeed checkpoint is DeepSpeed's own pickle, which it loads
  with ``weights_only=False``: resuming one needs ``allow_pickled_checkpoints: true`` (only for checkpoints you made).
- The newest complete checkpoint with every file present is resumed; an incomplete one is skipped, saying so.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..atomic import atomic_write_text
from ..ownership import owned_by_a_tool
from .config import TrainConfig

RUN_CONFIG = "run_config.json"
LOADER_STATE = "loader_state.json"
COMPLETE = ".complete"
# Keys a resumed run may change: when to log, evaluate, save and stop. Anything else changes what is trained.
CADENCE_KEYS = {"eval_every", "save_every", "log_every", "stop_after", "keep_checkpoints"}


class RunFolderError(RuntimeError):
    """The output folder or its checkpoints cannot be used as asked; the message says what to do."""


def prepare_output_dir(output_dir: Path, config: TrainConfig, resume: bool, is_main: bool) -> None:
    """Check the folder against the request; on a fresh start, record the run's settings (main process)."""
    if output_dir.exists() and not output_dir.is_dir():
        raise RunFolderError(f"output_dir {output_dir} is a file; give a folder for the run")
    owner = owned_by_a_tool(output_dir)
    if owner is not None:
        raise RunFolderError(f"output_dir {output_dir} is inside {owner}, a folder another tool wrote as a whole and "
                             "replaces when it runs again (curated data, an export): the run's checkpoints would be "
                             "deleted with it. Choose an output_dir outside it")
    checkpoints = sorted((output_dir / "checkpoints").glob("step_*")) if (output_dir / "checkpoints").exists() else []
    used = (output_dir / "metrics.jsonl").exists() or bool(checkpoints)
    if used and not resume:
        raise RunFolderError(f"{output_dir} already holds a run (metrics.jsonl or checkpoints/): pass --resume to "
                             "continue it, or choose a new output_dir")
    settings = {**_comparable(config), "data_fingerprint": data_fingerprint(config.data_dir)}
    saved_path = output_dir / RUN_CONFIG
    if resume and saved_path.exists():
        saved = json.loads(saved_path.read_text())
        before, now = saved.get("data_fingerprint"), settings["data_fingerprint"]
        if before is not None and before != now:
            raise RunFolderError(f"--resume: the data in {config.data_dir} is not the data this run started on "
                                 f"(fingerprint {before} then, {now} now: it was curated again). The checkpoint's "
                                 "position in the data belongs to the old data: start a new run in a new output_dir, "
                                 "or restore the old data")
        saved.setdefault("data_fingerprint", now)  # runs started before fingerprints were recorded
        changed = {key: (saved.get(key), value) for key, value in settings.items()
                   if key not in CADENCE_KEYS and saved.get(key) != value}
        if changed:
            listing = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in sorted(changed.items()))
            raise RunFolderError(f"--resume with changed settings ({listing}): the checkpoint's optimizer, schedule "
                                 "and data order belong to the old ones. Resume with the same settings (only "
                                 f"{', '.join(sorted(CADENCE_KEYS))} may change), or start a new run in a new "
                                 "output_dir")
    if is_main and not resume:
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved_path, json.dumps(settings, indent=2))


def data_fingerprint(data_dir: str | Path) -> str | None:
    """A digest of a tokenized data folder's manifest (its sizes, tokenizer and the recipes that made it): another
    curation into the same folder gives another fingerprint."""
    import hashlib

    manifest = Path(data_dir) / "manifest.json"
    return hashlib.sha1(manifest.read_bytes()).hexdigest()[:16] if manifest.is_file() else None


def _comparable(config: TrainConfig) -> dict:
    settings = asdict(config)
    settings.pop("output_dir")
    return settings


def required_files(deepspeed: bool, world_size: int) -> list[str]:
    if deepspeed:
        return ["pytorch_model", LOADER_STATE]
    return ["model.safetensors", "optimizer.bin", "scheduler.bin", LOADER_STATE] + [
        f"random_states_{rank}.pkl" for rank in range(world_size)]


def find_checkpoint(output_dir: Path, deepspeed: bool, world_size: int, log=print) -> Path:
    """The newest complete checkpoint with all its files; skips (and says so) any that lacks one."""
    return next(iter(usable_checkpoints(output_dir, deepspeed, world_size, log)))


def usable_checkpoints(output_dir: Path, deepspeed: bool, world_size: int, log=print):
    """Complete checkpoints with all their files, newest first (each skipped one said with why); raises when there
    is none at all."""
    folder = output_dir / "checkpoints"
    found = False
    candidates = sorted(((int(p.name.split("_")[1]), p) for p in folder.glob("step_*")
                         if p.name.split("_")[1].isdigit()), reverse=True) if folder.exists() else []
    for _, path in candidates:
        if not (path / COMPLETE).exists():
            log(f"[train] skipping {path}: not complete (a save was cut short)")
            continue
        missing = [name for name in required_files(deepspeed, world_size) if not (path / name).exists()]
        if missing:
            log(f"[train] skipping {path}: missing {', '.join(missing)}; falling back to an earlier checkpoint")
            continue
        found = True
        yield path
    if found:
        return
    raise RunFolderError(f"--resume: no complete checkpoint in {folder} ({len(candidates)} found, none usable); "
                         "start without --resume (in a new output_dir)")


def truncate_metrics(metrics_path: Path, step: int) -> None:
    """Drop metric rows past the resumed step (a run killed after logging but before saving wrote them)."""
    from .metrics import parse_metrics

    if not metrics_path.exists():
        return
    text = metrics_path.read_text()
    try:
        rows = parse_metrics(text, metrics_path)
    except ValueError as exc:
        raise RunFolderError(str(exc)) from exc
    kept = [row for row in rows if row["step"] <= step]
    new_text = "".join(json.dumps(row) + "\n" for row in kept)
    if new_text != text:
        atomic_write_text(metrics_path, new_text)


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """A run's complete checkpoints, oldest first."""
    folder = Path(output_dir) / "checkpoints"
    found = [p for p in folder.glob("step_*") if p.name.split("_")[1].isdigit() and (p / COMPLETE).exists()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def load_checkpoint_encoder(checkpoint: str | Path, backbone: str, num_layers: int | None = None,
                            max_length: int = 512):
    """The encoder saved in a (non-DeepSpeed) checkpoint: ``backbone`` is built as the run built it (same spec, same
    layer count), then the checkpoint's safetensors weights are loaded into it, strictly (a wrong ``backbone`` or
    ``num_layers`` is an error naming the mismatched keys, not a silently half-loaded model)."""
    from safetensors.torch import load_file

    from ..embedder.backbones import load_backbone
    from ..embedder.model import F2LLMEncoder

    checkpoint = Path(checkpoint)
    weights = checkpoint / "model.safetensors"
    if not weights.is_file():
        raise RunFolderError(f"{checkpoint}: no model.safetensors; give a checkpoint folder of a run "
                             "(runs/.../checkpoints/step_N)")
    model, tokenizer = load_backbone(backbone, num_layers=num_layers)
    state = {k.removeprefix("backbone."): v for k, v in load_file(str(weights)).items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise RunFolderError(f"{checkpoint}: its weights do not fit {backbone!r} with num_layers={num_layers} "
                             f"({str(exc).splitlines()[1][:200] if len(str(exc).splitlines()) > 1 else exc}); "
                             "give the backbone and layer count the run trained") from exc
    return F2LLMEncoder(model, tokenizer, max_length=max_length)


def prune_checkpoints(output_dir: Path, keep: int, log=print) -> list[Path]:
    """Remove all but the newest ``keep`` complete checkpoints (0: keep all); return what was removed. Only
    checkpoints this trainer completed are counted and removed; the final export (``final/``) is never touched, and
    an unfinished save (no completion mark) is left for ``find_checkpoint`` to skip."""
    import shutil

    complete = complete_checkpoints(output_dir)
    removed = complete[:-keep] if keep else []
    for path in removed:
        shutil.rmtree(path)
    if removed:
        log(f"[train] kept the newest {keep} checkpoints; removed {', '.join(p.name for p in removed)}")
    return removed
