"""A handful of sentences for notebook 00: paraphrase pairs on unrelated topics."""

from __future__ import annotations

import numpy as np

# (topic, sentence): two sentences per topic that say the same thing in different words.
DEMO_SENTENCES: list[tuple[str, str]] = [
    ("weather", "It is raining heavily in the city this morning."),
    ("weather", "A downpour is soaking the town today."),
    ("cooking", "Simmer the tomato sauce for twenty minutes before adding the basil."),
    ("cooking", "Let the tomato sauce cook gently for a while, then stir in basil."),
    ("python", "How do I reverse a list in Python?"),
    ("python", "What is the way to invert the order of a Python list?"),
    ("finance", "The central bank raised interest rates by a quarter point."),
    ("finance", "Borrowing costs went up 0.25% after the monetary authority's decision."),
    ("football", "The striker scored twice in the second half to win the match."),
    ("football", "Two late goals from the forward sealed the victory."),
    ("health", "Regular exercise lowers the risk of heart disease."),
    ("health", "Working out often reduces your chances of cardiovascular illness."),
]


def similarity_diagnostics(embeddings: np.ndarray, groups: list[str]) -> dict[str, float]:
    """How well unit-norm embeddings separate paraphrases from unrelated sentences.

    - ``mean_cos_paraphrase`` / ``mean_cos_unrelated``: average cosine within / across topics.
    - ``gap``: their difference; a useful embedder has a large one.
    - ``top1_paraphrase_accuracy``: share of sentences whose nearest neighbour is their paraphrase.
    """
    sim = embeddings @ embeddings.T
    same = np.equal.outer(groups, groups)
    off_diagonal = ~np.eye(len(groups), dtype=bool)
    paraphrase = sim[same & off_diagonal]
    unrelated = sim[~same]
    masked = np.where(off_diagonal, sim, -np.inf)
    nearest = masked.argmax(axis=1)
    accuracy = float(np.mean([groups[i] == groups[j] for i, j in enumerate(nearest)]))
    return {
        "mean_cos_paraphrase": float(paraphrase.mean()),
        "mean_cos_unrelated": float(unrelated.mean()),
        "gap": float(paraphrase.mean() - unrelated.mean()),
        "top1_paraphrase_accuracy": accuracy,
    }


def padding_pitfall(model, tokenizer, texts: list[str], groups: list[str], max_length: int) -> dict[str, dict]:
    """The padding-side pitfall, live: one right-padded batch pooled at each row's last real token (right) and at
    position -1 (the common bug), against each text embedded alone (no padding at all).

    Per pooling: ``alone_cosine`` = mean cosine between a text's embedding in the batch and alone (1.0 means the
    embedding does not depend on the batch it was padded in), ``rows_pooling_a_pad``, and the similarity
    diagnostics of :func:`similarity_diagnostics`.
    """
    import torch

    from ..embedder.pooling import last_token_pool, normalize
    from ..embedder.tokenization import pad_batch, tokenize_with_eos

    ids = tokenize_with_eos(tokenizer, texts, max_length)
    input_ids, attention_mask, lengths = pad_batch(ids, tokenizer.pad_token_id, padding_side="right")
    with torch.no_grad():
        hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
        alone = torch.cat([model(input_ids=torch.tensor([row])).last_hidden_state[:, -1].float() for row in ids])
    alone = normalize(alone)
    pooled = {"last real token (length - 1)": normalize(last_token_pool(hidden, lengths)),
              "position -1 (the bug)": normalize(hidden[:, -1])}
    width = input_ids.shape[1]
    pads = {"last real token (length - 1)": 0, "position -1 (the bug)": int((lengths < width).sum())}
    return {name: {"alone_cosine": float((emb * alone).sum(-1).mean()), "rows_pooling_a_pad": pads[name],
                   **similarity_diagnostics(emb.numpy(), groups)} for name, emb in pooled.items()}
