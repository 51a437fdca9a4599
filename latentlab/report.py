"""Reading a study directory for the report notebooks, and rendering them to HTML.

The notebooks in `notebooks/` only call these functions (and the plotting and analysis
modules); they hold no library logic. `render_notebook` executes a notebook headless with
nbclient, with its parameters injected as the first cell, and writes HTML with nbconvert.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from latentlab.errors import LatentlabError
from latentlab.io import atomic_path

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


@dataclass
class StudyResults:
    """The tables and figures of a finished study directory."""

    path: Path
    config: dict
    summary: pd.DataFrame
    correlations: pd.DataFrame
    figures: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)


FIGURES = {
    "nll_vs_components": "NLL against the number of GMM components (MAETok Fig. 2a)",
    "sit_loss_curves": "SiT held-out loss during training (MAETok Fig. 2b)",
    "umap": "UMAP of each tokenizer's latents, coloured by class (MAETok Fig. 4)",
    "metrics_vs_gfid": "Each latent metric against generation quality",
    "reconstructions": "Originals (top) against reconstructions, per tokenizer",
    "samples": "SiT samples decoded through each tokenizer",
}


def load_study(path: str | os.PathLike) -> StudyResults:
    """Load summary.csv, correlations.csv, the other tables and the figures of a study directory."""
    path = Path(path)
    if not (path / "summary.csv").is_file():
        raise LatentlabError(f"{path} is not a finished study (no summary.csv); run `latentlab run STUDY.yaml --out {path}`")
    config = json.loads((path / "study.json").read_text()) if (path / "study.json").is_file() else {}
    summary = pd.read_csv(path / "summary.csv")
    corr = pd.read_csv(path / "correlations.csv") if (path / "correlations.csv").is_file() else pd.DataFrame()
    figures = {k: path / "figures" / f"{k}.png" for k in FIGURES if (path / "figures" / f"{k}.png").is_file()}
    tables = {p.stem: pd.read_csv(p) for p in sorted((path / "tables").glob("*.csv"))} if (path / "tables").is_dir() else {}
    return StudyResults(path, config, summary, corr, figures, tables)


def strongest_correlations(corr: pd.DataFrame, target: str, k: int = 5) -> pd.DataFrame:
    """The `k` metrics with the largest |Spearman rho| against `target`."""
    if corr.empty:
        return corr
    sub = corr[corr["target"] == target].dropna(subset=["spearman"])
    return sub.reindex(sub["spearman"].abs().sort_values(ascending=False).index).head(k)


def render_notebook(notebook: str | os.PathLike, out_html: str | os.PathLike, parameters: dict,
                    timeout: int = 600, cwd: str | os.PathLike | None = None) -> Path:
    """Execute `notebook` headless with `parameters` injected, and write it as HTML (atomically)."""
    try:
        import nbformat
        from nbclient import NotebookClient
        from nbconvert import HTMLExporter
    except ImportError:
        raise LatentlabError("rendering reports needs the notebooks extra: pip install 'latentlab[notebooks]'") from None
    notebook = Path(notebook)
    if not notebook.is_file():
        raise LatentlabError(f"notebook not found: {notebook}")
    nb = nbformat.read(notebook, as_version=4)
    src = "# Parameters injected by latentlab.report.render_notebook\n" + "\n".join(
        f"{k} = {v!r}" for k, v in parameters.items())
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    at = tagged[0] + 1 if tagged else 0  # right after the notebook's own defaults, as papermill does
    nb.cells.insert(at, nbformat.v4.new_code_cell(src, metadata={"tags": ["injected-parameters"]}))
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd or Path.cwd())}})
    try:
        client.execute()
    except Exception as e:  # nbclient raises CellExecutionError with the cell's traceback
        first = str(e).strip().splitlines()
        raise LatentlabError(f"notebook {notebook.name} failed: {first[-1] if first else type(e).__name__}") from None
    body, _ = HTMLExporter(exclude_input=False).from_notebook_node(nb)
    with atomic_path(out_html) as tmp:
        tmp.write_text(body)
    return Path(out_html)
