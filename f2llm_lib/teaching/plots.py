"""Plots the notebooks show and the reports embed; each also saves a PNG when given a path."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np


def plot_similarity_heatmap(sim: np.ndarray, labels: list[str], title: str, path: Path | None = None):
    """A cosine-similarity matrix with its values written in each cell."""
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(labels), 0.8 + 0.5 * len(labels)))
    image = ax.imshow(sim, vmin=min(0.0, float(sim.min())), vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if sim[i, j] < 0.7 else "black")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_bars(values: dict[str, dict[str, float]], metric: str, title: str, path: Path | None = None):
    """One bar per variant for one metric, e.g. {"last_token": {...}, "mean": {...}}."""
    fig, ax = plt.subplots(figsize=(5, 3))
    names = list(values)
    ax.bar(names, [values[n][metric] for n in names], color="tab:blue")
    ax.set_ylabel(metric)
    ax.set_title(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_curve(rows: list[dict], references: dict[str, float], path: Path | None = None):
    """Score against training minutes (``rows`` of checkpoint_curve), with horizontal lines for ``references``
    (e.g. {"BM25": 47.5, "base (untrained)": 1.2}) on the same task."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    points = sorted((r["minutes"] or 0.0, r["score"]) for r in rows)
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label="finetuned checkpoints")
    for (name, value), style in zip(sorted(references.items()), ["--", ":", "-.", (0, (1, 3))] * 3, strict=False):
        ax.axhline(value, linestyle=style, color="gray", linewidth=1)
        ax.text(0, value, f" {name} {value:.1f}", va="bottom", fontsize=7, color="dimgray")
    ax.set_xlabel("training minutes")
    ax.set_ylabel(f"{rows[0]['task']} score" if rows else "score")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_dimension_scores(rows: list[dict], full_scores: dict[str, float], path: Path | None = None):
    """Score against embedding dimension (``rows`` of ``dimension_scores``: one line per task, log-2 axis), with each
    task's full-dimension score from the main evaluation as a dotted line of the same colour."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for task in dict.fromkeys(r["task"] for r in rows):
        points = sorted((r["dim"], r["score"]) for r in rows if r["task"] == task)
        line, = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=task)
        if task in full_scores:
            ax.axhline(full_scores[task], linestyle=":", color=line.get_color(), linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("dimensions kept (first coordinates, renormalised)")
    ax.set_ylabel("main score x 100")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def _save(fig, path: Path | None):
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_mining_scores(mining: dict, scorer: str, path: Path | None = None):
    """Per mined dataset: the score histograms of the candidate pool (the 100 best), the kept negatives and the
    positives (``mining`` is ``curate(...).mining``: dataset -> MiningReport)."""
    fig, axes = plt.subplots(1, max(1, len(mining)), figsize=(5 * max(1, len(mining)), 3.2), squeeze=False)
    for ax, (name, report) in zip(axes[0], mining.items(), strict=False):
        ax.hist(report.window_scores, bins=40, alpha=0.5, label="the pool: 100 best (before)", density=True)
        ax.hist(report.kept_scores, bins=40, alpha=0.6, label="kept negatives (after)", density=True)
        ax.hist(report.positive_scores, bins=40, alpha=0.5, label="positives", density=True)
        ax.set_title(f"{name} ({scorer})")
        ax.set_xlabel("score")
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_length_histogram(manifest: dict, path: Path | None = None):
    """Token lengths of queries and documents, from a tokenized folder's manifest."""
    hist = manifest["length_histogram"]
    fig, ax = plt.subplots(figsize=(6, 3))
    labels = [f"<{b}" for b in hist["bins"][1:]]
    ax.bar(labels, hist["queries"], alpha=0.6, label="queries")
    ax.bar(labels, hist["documents"], alpha=0.6, label="documents")
    ax.set_xlabel("tokens (EOS included)")
    ax.legend()
    return _save(fig, path)


def plot_memory_curve(rows: list[dict], path: Path | None = None):
    """Peak extra memory against B = N per implementation (rows of ``losses.benchmark.memory_curve``)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for impl in dict.fromkeys(r["impl"] for r in rows):
        mine = [r for r in rows if r["impl"] == impl]
        ax.plot([r["batch"] for r in mine], [max(r["peak_mb"], 0.1) for r in mine], marker="o", label=impl)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(f"B = N (d = {rows[0].get('dim', '?') if rows else '?'})")
    ax.set_ylabel("peak extra memory (MB)")
    ax.legend()
    return _save(fig, path)


def plot_loss_curves(runs: dict[str, list[dict]], path: Path | None = None):
    """Training loss per step, one line per dataset and run (each step draws one dataset, and their losses differ in
    scale: retrieval adds the in-batch term), and mean validation loss per evaluation, one line per run."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    datasets = sorted({m["dataset"] for metrics in runs.values() for m in metrics})
    colors = {name: f"C{i}" for i, name in enumerate(datasets)}
    for (name, metrics), style in zip(runs.items(), ["-", "--", ":", "-."] * 3, strict=False):
        for dataset in datasets:
            points = [(m["step"], m["loss"]) for m in metrics if m["dataset"] == dataset]
            if points:
                axes[0].plot(*zip(*points, strict=True), style, marker=".", color=colors[dataset], alpha=0.85,
                             label=f"{dataset} ({name})" if len(runs) > 1 else dataset)
        val = [(m["step"], sum(m["val"].values()) / len(m["val"])) for m in metrics if m.get("val")]
        if val:
            axes[1].plot(*zip(*val, strict=True), style, marker="o", label=name)
    axes[0].set_title("training loss, per dataset")
    axes[1].set_title("mean validation loss")
    for ax in axes:
        ax.set_xlabel("step")
        if ax.has_data():
            ax.legend(fontsize=7)
    return _save(fig, path)


def _boxes(ax, x: float, y0: float, labels: list[str], colors: list[str], width: float = 0.9) -> None:
    for i, (label, color) in enumerate(zip(labels, colors, strict=True)):
        ax.add_patch(plt.Rectangle((x, y0 - i), width, 0.8, color=color, alpha=0.85))
        ax.text(x + width / 2, y0 - i + 0.4, label, ha="center", va="center", fontsize=7)


def diagram_gathered_negatives(world_size: int = 2, per_rank: int = 3, path: Path | None = None):
    """Who scores against whom in F2LLM's in-batch loss: each rank's queries against the positives of every rank
    (all-gathered), and where the gradient of a gathered positive has to go back to."""
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    fig, ax = plt.subplots(figsize=(2.2 + 2.2 * world_size, 1.6 + 0.6 * per_rank))
    for rank in range(world_size):
        c = colors[rank % len(colors)]
        x = rank * 2.2
        ax.text(x + 0.45, 0.9, f"rank {rank}", ha="center", fontsize=9, weight="bold")
        _boxes(ax, x, 0, [f"q{rank}.{i}" for i in range(per_rank)], [c] * per_rank)
        _boxes(ax, x + 1.0, 0, [f"p{rank}.{i}" for i in range(per_rank)], [c] * per_rank)
    gx = world_size * 2.2 + 0.2
    ax.text(gx + 0.45, 0.9, "gathered", ha="center", fontsize=9, weight="bold")
    labels = [f"p{r}.{i}" for r in range(world_size) for i in range(per_rank)]
    _boxes(ax, gx, 0, labels, [colors[r % len(colors)] for r in range(world_size) for _ in range(per_rank)])
    ax.annotate("", xy=(gx, -0.6), xytext=(1.9, -0.6), arrowprops={"arrowstyle": "->", "color": "gray"})
    ax.text(gx + 1.0, -world_size * per_rank / 2,
            "every query scores\nagainst ALL gathered\npositives; the gradient\nof p_r.i must return\nto rank r "
            "(all-reduce\nof the key gradient)", fontsize=7, va="center")
    ax.set_xlim(-0.2, gx + 2.8)
    ax.set_ylim(-world_size * per_rank - 0.2, 1.3)
    ax.axis("off")
    return _save(fig, path)


def diagram_batch_layout(queries: int = 4, negatives: int = 2, path: Path | None = None):
    """One training step's forward: queries, their positives and their hard negatives go through the model as
    separate padded groups (length-sorted), then meet in the loss."""
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.45 * queries))
    _boxes(ax, 0, 0, [f"query {i}" for i in range(queries)], ["tab:blue"] * queries, width=1.4)
    _boxes(ax, 1.7, 0, [f"positive {i}" for i in range(queries)], ["tab:green"] * queries, width=1.4)
    for k in range(negatives):
        _boxes(ax, 3.4 + 1.5 * k, 0, [f"neg {i}.{k}" for i in range(queries)], ["tab:gray"] * queries, width=1.4)
    right = 3.4 + 1.5 * negatives
    ax.text(right + 0.1, -queries / 2 + 0.8,
            "hard-negative loss: row i vs\n[positive i, neg i.*]\nin-batch loss (retrieval):\nquery i vs every "
            "positive\n(all ranks)", fontsize=7, va="center")
    for x, label in ((0.7, "encoded with\nthe instruction"), (2.4, "documents"),
                     (3.4 + 0.75 * negatives, "documents")):
        ax.text(x, 1.0, label, ha="center", fontsize=7)
    ax.set_xlim(-0.1, right + 2.6)
    ax.set_ylim(-queries - 0.1, 1.6)
    ax.axis("off")
    return _save(fig, path)
