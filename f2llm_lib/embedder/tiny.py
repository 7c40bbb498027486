"""Two tiny offline backbones for fast tests: random 2-layer Qwen3 decoders, deterministic by seed.

- ``tiny-qwen3``: with the SmolLM2 tokenizer (the library's default), so its data is SmolLM2's;
- ``tiny-qwen3-bpe``: with a tokenizer of its own, a byte-level BPE of 4,096 tokens trained here on Python's own
  standard-library sources, with EOS = PAD as in Qwen3-Base checkpoints: a backbone whose tokenizer shares nothing
  with SmolLM2's, to show that every step uses the backbone's own tokenizer.

They have no skill (random weights); ``backbones.load_backbone`` resolves their specs like any other.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from ..atomic import atomic_folder
from ..paths import cache_dir

TINY_QWEN3_SPEC = "tiny-qwen3"
TINY_BPE_SPEC = "tiny-qwen3-bpe"
TINY_BPE_VOCAB = 4096
TINY_BPE_SPECIALS = ("<|im_start|>", "<|im_end|>", "<|fim_pad|>", "<|endoftext|>")  # EOS = PAD = id 3
# Training text for the BPE: the sources of these standard-library modules (present wherever Python is).
TINY_BPE_SOURCES = ("argparse", "textwrap", "csv", "pathlib", "json.decoder", "json.encoder", "email.message",
                    "http.client", "urllib.parse", "logging", "xml.dom.minidom", "configparser")
# Bump when the tokenizer's training changes, so stale caches are rebuilt rather than reused.
TINY_BPE_VERSION = 2


def _stdlib_sources() -> list[str]:
    texts = []
    for name in TINY_BPE_SOURCES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            texts.append(Path(spec.origin).read_text(encoding="utf-8"))
    return texts


def tiny_bpe_tokenizer() -> PreTrainedTokenizerBase:
    """The ``tiny-qwen3-bpe`` tokenizer: trained once with the ``tokenizers`` library, then cached."""
    folder = cache_dir() / TINY_BPE_SPEC / f"v{TINY_BPE_VERSION}-{TINY_BPE_VOCAB}"
    if not folder.exists():
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        from transformers import PreTrainedTokenizerFast

        with atomic_folder(folder, keep_existing=True) as tmp:
            bpe = Tokenizer(models.BPE())
            bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            bpe.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(vocab_size=TINY_BPE_VOCAB, special_tokens=list(TINY_BPE_SPECIALS),
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
            bpe.train_from_iterator(_stdlib_sources(), trainer)
            eos = TINY_BPE_SPECIALS[-1]
            PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=eos, pad_token=eos).save_pretrained(tmp)
    return AutoTokenizer.from_pretrained(folder)


def tiny_qwen3(tokenizer: PreTrainedTokenizerBase, seed: int = 0, hidden_size: int = 64,
               num_layers: int = 2) -> PreTrainedModel:
    """A randomly initialised Qwen3 decoder for ``tokenizer``, identical for identical seeds; the caller's random
    state is left as it was."""
    from transformers import Qwen3Config, Qwen3Model

    if not 64 <= hidden_size <= 128 or hidden_size % 16:
        raise ValueError(f"tiny-qwen3 hidden_size must be a multiple of 16 in [64, 128], got {hidden_size}")
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Qwen3Model(config)
    finally:
        torch.random.set_rng_state(generator_state)  # leave the caller's RNG untouched
    return model
