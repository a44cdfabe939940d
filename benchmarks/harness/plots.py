"""PNG versions of the benchmark tables (matplotlib is optional: without it, a note and no PNG).

Every function takes plain data (the same dicts the tables print) and writes one PNG into
``docs/img/`` (or ``--plots DIR``), small enough to commit (72-100 dpi, a few tens of KB), so the
README can link it.  The Agg backend is selected: benchmarks run headless.
"""
from __future__ import annotations

import os
from typing import Sequence

from .report import REPO_ROOT

DEFAULT_DIR = os.path.join(REPO_ROOT, "docs", "img")


def _pyplot():
    """matplotlib.pyplot with the headless backend, or None (printed once) when it is not installed."""
    try:
        import matplotlib
    except ImportError:
        print("  (matplotlib not installed: no PNG written; pip install 'faasx[bench]')", flush=True)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out_dir: str | None, name: str) -> str:
    out_dir = out_dir or DEFAULT_DIR
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    fig.clf()
    print(f"  plot written to {os.path.relpath(path)}", flush=True)
    return path


def line_plot(name: str, title: str, xlabel: str, ylabel: str, series: dict, out_dir: str | None = None,
              logx: bool = False, logy: bool = False, hline: float | None = None,
              hline_label: str | None = None) -> str | None:
    """One line per series: ``series = {label: [(x, y), ...]}``."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, points in series.items():
        pts = sorted(p for p in points if p[1] is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=1, label=hline_label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_dir, name)


def grouped_bars(name: str, title: str, ylabel: str, groups: Sequence[str], series: dict,
                 out_dir: str | None = None, hline: float | None = None, hline_label: str | None = None,
                 logy: bool = False) -> str | None:
    """Bars per group, one colour per series: ``series = {label: [value per group]}`` (None = no bar)."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = [g + i * width for g, v in enumerate(values) if v is not None]
        ax.bar(xs, [v for v in values if v is not None], width, label=label)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups, fontsize=8)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=1, label=hline_label)
    if logy:
        ax.set_yscale("log")
    ax.set(title=title, ylabel=ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_dir, name)


def heatmap(name: str, title: str, rows: Sequence[str], cols: Sequence[str], values, texts=None,
            out_dir: str | None = None, cbar_label: str = "") -> str | None:
    """A labelled grid coloured by ``values[r][c]`` (0..1, None = not measured), each cell showing
    ``texts[r][c]`` (default: the value as a percentage)."""
    plt = _pyplot()
    if plt is None:
        return None
    import numpy as np
    data = np.array([[np.nan if v is None else v for v in r] for r in values], dtype=float)
    fig, ax = plt.subplots(figsize=(8.5, 0.42 * len(rows) + 1.8))
    im = ax.imshow(data, cmap="viridis", aspect="auto", vmin=0, vmax=1)
    ax.set_xticks(range(len(cols)), cols, fontsize=9)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    for (r, c), v in np.ndenumerate(data):
        if not np.isnan(v):
            text = texts[r][c] if texts else f"{v:.0%}"
            ax.text(c, r, text, ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black")
    fig.colorbar(im, ax=ax, label=cbar_label)
    ax.set_title(title, fontsize=10)
    return _save(fig, out_dir, name)


def distributions(name: str, title: str, samples: dict, xlabel: str, out_dir: str | None = None) -> str | None:
    """Empirical CDFs on a log x axis: ``samples = {label: [value, ...]}`` (latencies, in ms)."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, vals in samples.items():
        s = sorted(vals)
        if s:
            ax.step(s, [(i + 1) / len(s) for i in range(len(s))], where="post", label=label)
    ax.set_xscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel="fraction of round trips <= x")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_dir, name)
