"""The GMM as a mode counter: `modes.csv` from the NLL-against-K table (`gmm.csv`).

One row per tokenizer and PCA dimension:

    modes_heldout   the K with the lowest held-out NLL (the train NLL when nothing is held out)
    modes_bic       the K with the lowest BIC on the training part
    gain_k{K}       held-out NLL(1) - NLL(K): the structure a K-mode mixture finds beyond one Gaussian

Raw NLLs are not mode counts: after z-scoring, the train NLL at K = 1 is the constant
D/2 log(2 pi e) for every tokenizer, and a single Gaussian has the highest NLL at every K, so
"lower NLL" means more structure beyond second order, not fewer modes. The gains and the
mode counts measure that structure directly, in one fixed dimension (`gmm.pca_dim`) so that
a tokenizer's row does not depend on which other tokenizers are in the set.
`below_pca_variance` flags a tokenizer that explains less than `pca_variance` at that dimension.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MODES_FILE = "modes.csv"


def gain_columns(components) -> list[str]:
    """gain_k{K} for every K > 1 of `components`."""
    return [f"gain_k{int(k)}" for k in sorted(components) if int(k) > 1]


def modes_table(table: pd.DataFrame, pca_variance: float) -> pd.DataFrame:
    """modes.csv rows (tokenizer, pca_dim, explained_variance, below_pca_variance, modes_heldout, modes_bic,
    gain_k{K}) from a gmm.csv table that contains K = 1."""
    rows = []
    ks = sorted(int(k) for k in table["n_components"].unique())
    for (name, dim), g in table.groupby(["tokenizer", "pca_dim"], sort=False):
        g = g.set_index(g["n_components"].astype(int)).sort_index()
        nll = g["heldout_nll"] if g["heldout_nll"].notna().all() else g["train_nll"]
        ev = float(g["explained_variance"].iloc[0])
        row = {"tokenizer": name, "pca_dim": int(dim), "explained_variance": ev,
               "below_pca_variance": bool(np.isfinite(ev) and ev < pca_variance),
               "modes_heldout": int(nll.idxmin()), "modes_bic": int(g["bic"].idxmin())}
        base = float(nll.loc[1]) if 1 in nll.index else float("nan")
        row.update({f"gain_k{k}": base - float(nll.loc[k]) for k in ks if k > 1})
        rows.append(row)
    cols = ["tokenizer", "pca_dim", "explained_variance", "below_pca_variance", "modes_heldout", "modes_bic"]
    return pd.DataFrame(rows, columns=cols + gain_columns(ks))
