"""Study-level figures, each with its uncertainty: metrics against generation (error bars both ways), NLL-vs-K
and SiT-loss curves (bands across seeds), paired comparisons against the reference, and image panels."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from latentlab.plots import new_figure, save_figure


def _col(df: pd.DataFrame, c: str) -> np.ndarray:
    return pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64) if c in df else np.full(len(df), np.nan)


def _err(df: pd.DataFrame, c: str) -> np.ndarray:
    """(2, n) error-bar lengths below and above each value of column c from c_lo / c_hi (0 where missing)."""
    v, lo, hi = _col(df, c), _col(df, f"{c}_lo"), _col(df, f"{c}_hi")
    return np.nan_to_num(np.stack([v - lo, hi - v]), nan=0.0).clip(min=0)


def _is_baseline(df: pd.DataFrame) -> np.ndarray:
    return df["baseline"].fillna(False).astype(bool).to_numpy() if "baseline" in df else np.zeros(len(df), bool)


def correlation_title(c: pd.Series) -> str:
    """rho [lo, hi], p (method) and n of one correlations.csv row, for a figure title."""
    def f(v, spec="+.2f"):
        return format(v, spec) if np.isfinite(v) else "n/a"

    method = str(c.p_method).split(" ")[0] if isinstance(c.p_method, str) and c.p_method else ""
    return (f"rho {f(c.spearman)} [{f(c.spearman_lo)}, {f(c.spearman_hi)}]\n"
            f"p={f(c.p_exact, '.3g')} {method}, n={int(c.n)}{' (primary)' if bool(c.primary) else ''}")


def _tokenizer_styles(n: int) -> tuple[np.ndarray, np.ndarray]:
    """A colour and a marker for each of n tokenizers, the same in every panel of a figure (10 colours, then
    the next marker)."""
    markers = "osD^vP*Xh<>"
    i = np.arange(n)
    return np.array([f"C{k % 10}" for k in i]), np.array([markers[(k // 10) % len(markers)] for k in i])


def plot_metrics_vs_target(summary: pd.DataFrame, metrics: list[str], target: str, path: str | os.PathLike,
                           correlations: pd.DataFrame | None = None, ncols: int = 4) -> Path:
    """One scatter per metric against `target`, a point per tokenizer with 95% error bars both ways.

    Each tokenizer has one colour and marker across the panels, named once in the figure's legend. Baseline
    rows (hollow markers) are drawn for reference but are not part of the correlation in the title.
    """
    from matplotlib.lines import Line2D

    metrics = metrics or ["(no metric)"]
    nrows = math.ceil(len(metrics) / ncols)
    # text and artists are most of the cost of drawing a grid of dozens of panels: few ticks, the y label on the
    # left column only, the x label in the title, tokenizers named in one legend, each panel's error bars in one call
    fig, axes = new_figure(min(ncols, len(metrics)), nrows, size=(3.4, 3.1))
    flat = axes.ravel()
    base = _is_baseline(summary)
    names = list(summary["tokenizer"])
    colors, markers = _tokenizer_styles(len(names))
    for ax, m in zip(flat, metrics):
        if m not in summary or target not in summary:
            ax.axis("off")
            continue
        x, y = _col(summary, m), _col(summary, target)
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.any():
            ax.errorbar(x[ok], y[ok], xerr=_err(summary, m)[:, ok], yerr=_err(summary, target)[:, ok], fmt="none",
                        ecolor="0.55", capsize=2, lw=0.7, zorder=1)
        for marker in dict.fromkeys(markers):
            same = ok & (markers == marker)
            for sel, hollow in ((same & ~base, False), (same & base, True)):
                if sel.any():
                    ax.scatter(x[sel], y[sel], s=26, marker=marker, zorder=2, linewidths=1.0,
                               facecolors="none" if hollow else colors[sel], edgecolors=colors[sel])
        title = m
        if correlations is not None and not correlations.empty:
            c = correlations[(correlations.predictor == m) & (correlations.target == target)]
            if len(c):
                title += "\n" + correlation_title(c.iloc[0])
        ax.set_title(title, fontsize=7)
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel(target, fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.yaxis.set_major_locator(MaxNLocator(4))
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    for ax in flat[len(metrics):]:
        ax.axis("off")
    handles = [Line2D([], [], ls="none", marker=mk, color=c, mfc="none" if b else c, label=f"{n} (baseline)" if b else n)
               for n, c, mk, b in zip(names, colors, markers, base)]
    top = 1 - 0.55 / (3.1 * nrows)  # fixed spacing for the three-line titles, under the legend
    legend_rows = math.ceil(len(handles) / 6)
    fig.legend(handles=handles, loc="upper center", ncols=min(6, len(handles)), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, 1.0))
    top -= (0.25 * legend_rows + 0.1) / (3.1 * nrows)
    # PNG only: a grid of dozens of panels is costly to lay out and a PDF of it is rarely wanted
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.04, top=top, wspace=0.35, hspace=0.75)
    return save_figure(fig, path, pdf=False, tight=False)


def _band(ax, x, y, lo, hi, color, label, dashed=False) -> None:
    ax.plot(x, y, marker="o", ms=3, color=color, label=label, ls="--" if dashed else "-")
    ok = np.isfinite(lo) & np.isfinite(hi)
    if ok.any():
        ax.fill_between(np.asarray(x)[ok], lo[ok], hi[ok], color=color, alpha=0.2, lw=0)


def draw_nll_bands(ax, summary: pd.DataFrame, components: list[int], pca_dims: list[int]) -> None:
    """Held-out GMM NLL against K per tokenizer, the mean over seeds with its 95% band, onto `ax`."""
    base = _is_baseline(summary)
    ks = np.asarray(components)
    for i, (name, b) in enumerate(zip(summary["tokenizer"], base)):
        row = summary.iloc[[i]]
        cols = [f"gmm_nll_k{k}" for k in ks]
        if not all(c in summary for c in cols):
            continue
        y = np.array([_col(row, c)[0] for c in cols])
        lo = np.array([_col(row, f"{c}_lo")[0] for c in cols])
        hi = np.array([_col(row, f"{c}_hi")[0] for c in cols])
        _band(ax, ks, y, lo, hi, f"C{i % 10}", f"{name}{' (baseline)' if b else ''}", dashed=b)
    dims = ", ".join(map(str, pca_dims))
    ax.set(xscale="log", xlabel="number of GMM components K", ylabel=f"held-out NLL (nats, {dims}-dim PCA)",
           title="GMM NLL against components")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def draw_curve_bands(ax, bands: pd.DataFrame, summary: pd.DataFrame | None = None) -> None:
    """Held-out SiT loss against step per tokenizer with its across-seed band; the last point's 95% interval
    (seeds and held-out images, from summary.csv's sit_loss_lo / _hi) as an error bar."""
    for i, (name, g) in enumerate(bands.groupby("tokenizer", sort=False)):
        g = g.sort_values("step")
        color = f"C{i % 10}"
        _band(ax, g.step.to_numpy(), g.loss.to_numpy(), g.loss_lo.to_numpy(np.float64), g.loss_hi.to_numpy(np.float64),
              color, name)
        if summary is not None and "sit_loss_lo" in summary:
            s = summary[summary.tokenizer == name]
            if len(s) and np.isfinite(_col(s, "sit_loss_lo")[0]):
                ax.errorbar([g.step.iloc[-1]], _col(s, "sit_loss"), yerr=_err(s, "sit_loss"), color=color, capsize=3)
    ax.set(xlabel="SiT training step", ylabel="held-out SiT loss (EMA)", title="SiT held-out loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_nll_bands(summary: pd.DataFrame, components: list[int], pca_dims: list[int], path: str | os.PathLike) -> Path:
    """MAETok Fig. 2a with uncertainty: `draw_nll_bands` as its own figure."""
    fig, axes = new_figure(1, size=(5.6, 4.0))
    draw_nll_bands(axes[0][0], summary, components, pca_dims)
    return save_figure(fig, path)


def plot_curve_bands(bands: pd.DataFrame, summary: pd.DataFrame | None, path: str | os.PathLike) -> Path:
    """MAETok Fig. 2b with uncertainty: `draw_curve_bands` as its own figure."""
    fig, axes = new_figure(1, size=(5.6, 4.0))
    draw_curve_bands(axes[0][0], bands, summary)
    return save_figure(fig, path)


def plot_comparisons(comparisons: pd.DataFrame, path: str | os.PathLike) -> Path:
    """One panel per per-image metric: each tokenizer minus the reference, with its 95% interval."""
    metrics = list(dict.fromkeys(comparisons["metric"])) if len(comparisons) else ["(no comparison)"]
    ncols = min(3, len(metrics))
    fig, axes = new_figure(ncols, math.ceil(len(metrics) / ncols),
                           size=(3.6, 0.35 * max(2, comparisons["tokenizer"].nunique()) + 1.2))
    flat = axes.ravel()
    for ax in flat[len(metrics):]:
        ax.axis("off")
    for ax, m in zip(flat, metrics):
        c = comparisons[comparisons["metric"] == m].reset_index(drop=True)
        if c.empty:
            ax.axis("off")
            continue
        y = np.arange(len(c))
        ax.errorbar(c["diff"], y, xerr=_err(c, "diff"), fmt="o", ms=4, capsize=2, lw=0.8)
        ax.axvline(0, color="gray", lw=0.8)
        ax.set_yticks(y, [f"{t}  p={p:.2g}" for t, p in zip(c["tokenizer"], c["p"])], fontsize=6)
        ax.set_title(f"{m}: minus {c['reference'].iloc[0]}", fontsize=8)
        ax.tick_params(axis="x", labelsize=6)
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_image_panels(images: dict[str, Path], path: str | os.PathLike, title: str = "") -> Path:
    """Stack existing PNG figures (one per tokenizer) into one figure, each panel titled by tokenizer."""
    import matplotlib.image as mpimg

    names = list(images) or ["(none)"]
    fig, axes = new_figure(1, len(names), size=(8.0, 2.4))
    for ax, name in zip(axes[:, 0], names):
        ax.axis("off")
        if name in images:
            img = mpimg.imread(images[name])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
        ax.set_title(f"{name}{' - ' + title if title else ''}", fontsize=9)
    return save_figure(fig, path)


def plot_pca_spectrum(pcas: dict, path: str | os.PathLike, threshold: float = 0.9, max_dim: int = 200) -> Path:
    """Cumulative explained variance against PCA dimension, one line per fitted PCA (all_explained_variance_ratio_)."""
    fig, axes = new_figure(1)
    ax = axes[0][0]
    for name, pca in pcas.items():
        cum = np.cumsum(pca.all_explained_variance_ratio_)[:max_dim]
        ax.plot(np.arange(1, len(cum) + 1), cum, label=f"{name} ({pca.dim_for_variance(threshold)} dims for {threshold:.0%})")
    ax.axhline(threshold, color="gray", ls=":", lw=1)
    ax.set(xlabel="PCA dimension", ylabel="cumulative explained variance", xscale="log", ylim=(0, 1.01),
           title="PCA spectrum")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_gmm_and_sit(summary: pd.DataFrame, bands: pd.DataFrame, components: list[int], pca_dims: list[int],
                     path: str | os.PathLike, tokenizers: list[str] | None = None) -> Path:
    """MAETok Fig. 2 side by side, with 95% bands across seeds: (a) held-out GMM NLL against K, (b) SiT loss."""
    if tokenizers:
        summary = summary[summary.tokenizer.isin(tokenizers)]
        bands = bands[bands.tokenizer.isin(tokenizers)]
    fig, axes = new_figure(2, size=(5.2, 3.8))
    draw_nll_bands(axes[0][0], summary, components, pca_dims)
    draw_curve_bands(axes[0][1], bands, summary)
    axes[0][0].set_title("(a) GMM NLL against components")
    axes[0][1].set_title("(b) SiT loss")
    return save_figure(fig, path)
