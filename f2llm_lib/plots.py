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
