"""Notebook rendering: latentlab's parameter injection (study.report.render_notebook) against papermill.

    python benchmarks/bench_notebook.py            # 3 paired runs of each
    python benchmarks/bench_notebook.py --runs 5

Both execute notebooks/explore_latents.ipynb on the embedded digits pixels (GMM K in {1, 2},
UMAP of 100 rows) with the same parameters and kernel, and write HTML with nbconvert; each run
is its own subprocess, A and B in turn, and the wall-clock ratio is taken pair by pair. This is
the measurement behind keeping render_notebook (see ARCHITECTURE.md): papermill is no faster and
would add packages to the notebooks extra. Skipped, with the reason, when papermill is not installed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import sys
from pathlib import Path
which, store, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
params = {"store_path": store, "out_dir": str(out / "explore"), "components": [1, 2], "umap_n": 100}
from latentlab.study.report import NOTEBOOK_DIR, render_notebook
nb_path = NOTEBOOK_DIR / "explore_latents.ipynb"
if which == "latentlab":
    render_notebook(nb_path, out / "a.html", params, cwd=out)
else:
    import papermill as pm
    from nbconvert import HTMLExporter
    nb = pm.execute_notebook(str(nb_path), None, parameters=params, kernel_name="python3", cwd=str(out),
                             progress_bar=False, log_output=False)
    (out / "b.html").write_text(HTMLExporter().from_notebook_node(nb)[0])
"""


def _run(which: str, store: str, out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", CHILD, which, store, str(out)], check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    try:
        import papermill  # noqa: F401
    except ImportError:
        print("skipped: papermill is not installed (pip install papermill)")
        return
    from latentlab.extract import import_pixels

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        import_pixels("digits", tmp / "px")
        store = str(tmp / "px" / "train")
        _run("latentlab", store, tmp)  # warm-up: caches, kernel start-up files
        pairs = []
        for i in range(args.runs):
            a = _run("latentlab", store, tmp)
            b = _run("papermill", store, tmp)
            pairs.append((a, b))
            print(f"run {i + 1}: render_notebook {a:.2f} s, papermill {b:.2f} s")
    med = statistics.median
    print(f"median wall: render_notebook {med(a for a, _ in pairs):.2f} s, papermill {med(b for _, b in pairs):.2f} s, "
          f"papermill / render_notebook = {med(b / a for a, b in pairs):.3f} (pairwise median)")


if __name__ == "__main__":
    main()
