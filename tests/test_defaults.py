"""Sensible defaults a new user relies on: decoder fine-tune data, store sets, one probe table, recorded
configs holding only what applies, and progress bars that show they are alive."""

import json
import re
import time

import numpy as np
import pytest
from conftest import run_cli

from latentlab.utils import progress


def _frames(err: str) -> list[str]:
    return [f.strip() for f in err.replace("\r", "\n").splitlines() if f.strip()]


# ---------------------------------------------------------------- progress

def test_a_bar_shows_it_is_alive_before_its_first_step(monkeypatch, capsys):
    monkeypatch.setenv("LATENTLAB_PROGRESS", "1")
    bar = progress(["ae", "maetok"], desc="umap", status=lambda t: f"{t}: embedding", heartbeat=0.05)
    for i, _ in enumerate(bar):
        assert bar.n == i  # the count is current at every step, not only when tqdm last printed
        time.sleep(0.4)
    assert bar.n == 2
    frames = _frames(capsys.readouterr().err)
    waiting = [f for f in frames if "0/2" in f and "ae: embedding" in f]
    assert len(waiting) >= 2, frames  # redrawn while the first (slow) step runs, naming what it works on
    assert any("1/2" in f and "maetok: embedding" in f for f in frames)


def test_a_bar_stops_its_heartbeat_when_closed(monkeypatch, capsys):
    monkeypatch.setenv("LATENTLAB_PROGRESS", "1")
    bar = progress(total=3, desc="work", heartbeat=0.02)
    time.sleep(0.1)
    bar.update(3)
    bar.close()
    capsys.readouterr()
    time.sleep(0.1)
    assert capsys.readouterr().err == ""


def test_em_bars_advance_with_every_iteration(monkeypatch, capsys, rng):
    from latentlab.analysis.gmm.mixture import GaussianMixture

    monkeypatch.setenv("LATENTLAB_PROGRESS", "1")
    x = np.concatenate([rng.normal(size=(200, 2)), rng.normal(size=(200, 2)) + 6])
    gmm = GaussianMixture(2, max_iter=40, tol=1e-8, random_state=0, device="cpu", progress=True).fit(x)
    frames = [f for f in _frames(capsys.readouterr().err) if f.startswith("EM K=2")]
    shown = {int(m.group(1)) for f in frames if (m := re.search(r"(\d+)/40", f)) and "lower_bound" in f}
    assert gmm.n_iter_ > 2 and shown == set(range(1, gmm.n_iter_ + 1)), (gmm.n_iter_, sorted(shown))
    assert any("kmeans initialisation" in f for f in frames)


def test_official_protocol_bars_advance_with_every_epoch(monkeypatch, capsys, rng):
    from latentlab.analysis.gmm.config import FitGMMConfig
    from latentlab.analysis.gmm.official import fit_adam

    monkeypatch.setenv("LATENTLAB_PROGRESS", "1")
    x = rng.normal(size=(128, 3)).astype(np.float32)
    fit_adam(x, x[:16], 2, FitGMMConfig(official_epochs=5, official_batch_size=32, device="cpu"), show=True)
    frames = [f for f in _frames(capsys.readouterr().err) if f.startswith("Adam K=2") and "loss=" in f]
    assert {int(re.search(r"(\d+)/5", f).group(1)) for f in frames} == {1, 2, 3, 4, 5}
