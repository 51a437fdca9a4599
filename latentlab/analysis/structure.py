"""Structure metrics of labelled latents: how well classes separate, and how many directions are used.

Each metric names its source. All of them take labelled `Rows` (the stream adapter: in memory or
streamed from a store) so that they run on the same pooled latents as the linear probe.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from latentlab.analysis.stream import Rows
from latentlab.errors import LatentlabError
from latentlab.utils import get_device

RANKME_EPS = 1e-7  # Garrido et al. 2023, eq. (1)


@torch.no_grad()
def knn_accuracy(bank: Rows, queries: Rows, num_classes: int, k: int = 20, temperature: float = 0.07,
                 device: str | torch.device | None = "cpu", query_batch: int = 1024, bank_block: int = 16384) -> dict:
    """Weighted kNN classification accuracy, as in DINO (Caron et al., "Emerging Properties in
    Self-Supervised Vision Transformers", ICCV 2021, eval_knn.py).

    Features are L2-normalised; each query takes its k most cosine-similar bank rows, each
    votes for its class with weight exp(similarity / temperature); the top-voted class is the
    prediction. Returns {"top1", "top5"} (top5 NaN when there are <= 5 classes) and "topk", the
    (Q, min(5, classes)) predicted classes of every query, best first. The bank is streamed, so it
    may be larger than memory; the queries are held in memory.
    """
    if k < 1 or temperature <= 0:
        raise LatentlabError(f"kNN needs k >= 1 and temperature > 0 (got k={k}, temperature={temperature})")
    device = get_device(device)
    q, qy = queries.load()
    q = F.normalize(torch.from_numpy(q).to(device, torch.float32), dim=1)  # (Q, D)
    nq = q.shape[0]
    best_sim = torch.full((nq, k), -float("inf"), device=device)  # (Q, k)
    best_lab = torch.zeros((nq, k), dtype=torch.long, device=device)  # (Q, k)
    for xb, yb in bank.batches(labels=True):
        for j in range(0, len(xb), bank_block):
            b = F.normalize(xb[j:j + bank_block].to(device, torch.float32), dim=1)  # (M, D)
            by = yb[j:j + bank_block].to(device)  # (M,)
            kk = min(k, b.shape[0])
            for i in range(0, nq, query_batch):
                sim = q[i:i + query_batch] @ b.T  # (B, M)
                s, pos = sim.topk(kk, dim=1)  # (B, kk)
                cand_s = torch.cat([best_sim[i:i + query_batch], s], 1)  # (B, k + kk)
                cand_l = torch.cat([best_lab[i:i + query_batch], by[pos]], 1)
                top, sel = cand_s.topk(k, dim=1)  # (B, k)
                best_sim[i:i + query_batch] = top
                best_lab[i:i + query_batch] = cand_l.gather(1, sel)
    weights = torch.exp(best_sim / temperature)  # (Q, k); exp(-inf) = 0 when the bank has < k rows
    votes = torch.zeros((nq, num_classes), device=device).scatter_add_(1, best_lab, weights)  # (Q, C)
    order = votes.topk(min(5, num_classes), dim=1).indices.cpu().numpy()  # (Q, <=5)
    hit = order == qy[:, None]
    return {"top1": float(hit[:, 0].mean()), "top5": float(hit.any(1).mean()) if num_classes > 5 else float("nan"),
            "topk": order}


def cluster_scores(feats: Rows, max_samples: int = 5000, seed: int = 0) -> dict:
    """Silhouette (Rousseeuw 1987), Calinski-Harabasz (1974) and Davies-Bouldin (1979) scores of the
    class labels, via scikit-learn, on at most `max_samples` rows drawn uniformly with `seed`."""
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    rng = np.random.default_rng(seed)
    rows = np.arange(feats.n) if feats.n <= max_samples else np.sort(rng.choice(feats.n, max_samples, replace=False))
    x, y = feats.take(rows).cpu().numpy(), feats.labels[rows]
    n_lab = len(np.unique(y))
    if n_lab < 2 or n_lab >= len(y):
        raise LatentlabError(f"cluster scores need 2 <= classes < samples (got {n_lab} classes in {len(y)} rows); "
                             f"raise the sample size or use more data")
    x = x.astype(np.float64)
    return {"silhouette": float(silhouette_score(x, y)),
            "calinski_harabasz": float(calinski_harabasz_score(x, y)),
            "davies_bouldin": float(davies_bouldin_score(x, y))}


def fisher_ratio(feats: Rows) -> float:
    """Fisher discriminant ratio tr(S_B) / tr(S_W) (Fisher 1936; the trace criterion of
    Fukunaga, "Introduction to Statistical Pattern Recognition", 1990, ch. 10).

    S_B = sum_k n_k (mu_k - mu)(mu_k - mu)^T, S_W = sum_k sum_{i in k} (x_i - mu_k)(x_i - mu_k)^T.
    Streamed in float64 with a shift (the first chunk's mean) against cancellation.
    """
    shift = None
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    sq = 0.0
    for x, y in feats.batches(labels=True):
        x = x.cpu().numpy().astype(np.float64)
        if shift is None:
            shift = x.mean(0)
        x -= shift  # (m, D)
        y = y.cpu().numpy()
        sq += float(np.einsum("ij,ij->", x, x))
        for c in np.unique(y):
            m = y == c
            sums[c] = sums.get(c, 0.0) + x[m].sum(0)
            counts[c] = counts.get(c, 0) + int(m.sum())
    n = sum(counts.values())
    total = sum(sums.values())
    between_plus = sum(float(s @ s) / counts[c] for c, s in sums.items())  # sum_k n_k |mu_k|^2
    tr_b = between_plus - float(total @ total) / n
    tr_w = sq - between_plus
    if tr_w <= 0:
        return float("inf")
    return tr_b / tr_w


@torch.no_grad()
def rankme(feats: Rows, max_samples: int = 25600, seed: int = 0,
           device: str | torch.device | None = "cpu") -> float:
    """Effective rank RankMe (Garrido, Balestriero, Najman, LeCun, "RankMe: Assessing the Downstream
    Performance of Pretrained Self-Supervised Representations by Their Rank", ICML 2023, eq. 1):
    exp(-sum_k p_k log p_k) with p_k = sigma_k / ||sigma||_1 + eps, eps = 1e-7, on the raw
    (uncentred, unstandardised) feature matrix of at most `max_samples` rows drawn with `seed`.

    Singular values come from the float64 Gram matrix X^T X (or X X^T when rows < dims).
    """
    device = get_device(device)
    rng = np.random.default_rng(seed)
    rows = np.arange(feats.n) if feats.n <= max_samples else np.sort(rng.choice(feats.n, max_samples, replace=False))
    x = feats.take(rows).to(device, torch.float64)  # (n, D)
    gram = x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T  # (r, r), r = min(n, D)
    ev = torch.linalg.eigvalsh(gram).clamp_min(0)
    sigma = ev.sqrt()
    if float(sigma.sum()) == 0:
        return 0.0
    p = sigma / sigma.sum() + RANKME_EPS
    return float(torch.exp(-(p * p.log()).sum()))
