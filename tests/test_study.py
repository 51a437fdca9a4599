"""End to end: a tiny study on digits runs, reuses every stage, survives SIGKILL, renders its notebooks."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import run_cli
from latentlab.study.config import TOKENIZER_STAGES, load_study_config
from latentlab.study.runner import run_study
from latentlab.study.report import summary_columns

TINY = {
    "dataset": "digits",
    "seed": 0,
    "device": "cpu",
    "tokenizers": {
        "pixels": {"arch": "pixels"},
        "ae": {"arch": "ae", "train": {"steps": 30, "eval_every": 30, "ckpt_every": 15, "batch_size": 32}},
        "maetok": {"arch": "maetok", "train": {"steps": 30, "eval_every": 30, "ckpt_every": 15, "batch_size": 32},
                   "decoder_finetune": {"steps": 10, "eval_every": 10, "ckpt_every": 10, "batch_size": 32}},
    },
    "sit": {"model": "SiT-tiny", "model_overrides": {"depth": 2, "hidden_size": 64},
            "train": {"steps": 30, "eval_every": 15, "ckpt_every": 15, "batch_size": 32}, "heldout_size": 32},
    "sample": {"n": 60, "steps": 4, "max_pngs": 8},
    "gmm": {"components": [1, 2, 4], "max_iter": 20},
    "probe": {"probe": {"epochs": 3}},
    "umap": {"n": 120, "pca_dim": 10},
    "metrics": {"extractor": "lenet"},
    "report": True,
}


def _cli_env(tmp: Path) -> dict:
    env = {**os.environ, "LATENTLAB_PROGRESS": "0", "OMP_NUM_THREADS": "2"}
    env.pop("LATENTLAB_WORKSPACE", None)
    return env


def _run(cfg: Path, out: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "latentlab", "run", str(cfg), "--out", str(out), "--json"],
                          env=env, capture_output=True, text=True, timeout=600)


def _tables(out: Path) -> dict:
    """The study's tables, without wall-clock columns (the only thing allowed to differ between runs)."""
    tables = {}
    for name in ["summary.csv", "correlations.csv", "tables/gmm.csv", "tables/sit_curves.csv", "tables/probe.csv",
                 "tables/umap.csv", "tables/generation.csv", "tables/recon.csv"]:
        df = pd.read_csv(out / name)
        tables[name] = df.drop(columns=[c for c in df.columns if c == "seconds"]).to_csv(index=False)
    return tables


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY, sort_keys=False))
    env = _cli_env(root)
    proc = _run(cfg, root / "a", env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cfg, root, env, json.loads(proc.stdout)


def test_tiny_study_outputs(study):
    cfg, root, env, summary = study
    out = root / "a"
    df = pd.read_csv(out / "summary.csv")
    assert list(df.tokenizer) == ["pixels", "ae", "maetok"]
    documented = summary_columns([1, 2, 4], "rfd_lenet", "gfd_lenet")
    assert documented == list(df.columns[:len(documented)])
    # every tokenizer got the metrics of every stage
    for col in ["lp_top1", "knn_top1", "rankme", "gmm_nll_k1", "gmm_nll_k4", "gmm_nll_per_dim_k2", "sit_loss",
                "gfd_lenet"]:
        assert df[col].notna().all(), col
    assert df.loc[df.tokenizer == "ae", "psnr"].notna().all() and df.loc[df.tokenizer == "pixels", "ssim"].eq(1.0).all()
    assert (df.pca_dim == df.pca_dim.iloc[0]).all()  # one common PCA dimension
    assert json.loads(df.sit_loss_curve.iloc[0])[-1][0] == 30
    corr = pd.read_csv(out / "correlations.csv")
    assert {"metric", "target", "n", "spearman", "kendall"} <= set(corr.columns)
    assert set(corr.target) == {"sit_loss", "gfd_lenet"} and (corr.n == 3).any()
    for fig in ["nll_vs_components", "sit_loss_curves", "umap", "metrics_vs_gfid", "reconstructions", "samples"]:
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000, fig
    html = (out / "report.html").read_text()
    assert "Summary table" in html and "data:image/png;base64" in html
    for tok in ["pixels", "ae", "maetok"]:
        for stage in TOKENIZER_STAGES:
            assert (out / tok / stage / "stage.json").is_file()
    assert not list(out.glob("*/*.work"))


def test_rerun_reuses_every_stage(study):
    cfg, root, env, first = study
    again = run_study(cfg, root / "a")
    assert again["ran"] == [] and len(again["reused"]) == 3 * len(TOKENIZER_STAGES) + 3


def test_sigkill_then_rerun_gives_identical_tables(study):
    """Kill a run inside a training stage, start it again: the tables equal the uninterrupted run's.

    To keep the test short, the killed run starts from a copy of the finished study with the
    later stages removed, so it must redo ae's SiT training, everything downstream, and maetok.
    """
    import shutil

    cfg, root, env, _ = study
    out = root / "b"
    shutil.copytree(root / "a", out)
    for p in ["ae/sit", "ae/sample", "ae/gfid", "maetok", "_study", "summary.csv", "correlations.csv", "tables",
              "figures", "report.html"]:
        (shutil.rmtree if (out / p).is_dir() else os.remove)(out / p)
    proc = subprocess.Popen([sys.executable, "-m", "latentlab", "run", str(cfg), "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    ckpt = out / "ae" / "sit.work" / "run" / "state.pt"
    while time.time() < deadline and not ckpt.exists():  # in the middle of SiT training, after a checkpoint
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (out / "ae" / "sit").exists() and not (out / "summary.csv").exists()
    done = _run(cfg, out, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _tables(out) == _tables(root / "a")


STUDY_WIDE = [("gmm", "latentlab.analysis.gmm.curves.plot_nll_vs_components"),  # after gmm.csv and gmm.json
              ("umap", "latentlab.analysis.umap.plot_umap"),                      # after the embedding
              ("relate", "latentlab.study.report.plot_image_panels")]             # after tables/ was filled


def test_each_study_wide_stage_failing_partway_then_rerun_gives_identical_tables(study, monkeypatch):
    """Fail gmm, then umap, then relate partway (each rerun gets one stage further); the last rerun finishes."""
    import shutil

    cfg, root, env, _ = study
    out = root / "c"
    shutil.copytree(root / "a", out)
    for p in ["_study", "summary.csv", "correlations.csv", "tables", "figures", "report.html", "run_log.json"]:
        (shutil.rmtree if (out / p).is_dir() else os.remove)(out / p)

    def boom(*args, **kwargs):
        raise RuntimeError("failed on purpose")

    for stage, target in STUDY_WIDE:
        with monkeypatch.context() as m:
            m.setattr(target, boom)
            with pytest.raises(RuntimeError, match="on purpose"):
                run_study(cfg, out)
        assert (out / "_study" / f"{stage}.work").is_dir() and not (out / "_study" / stage).exists()
    assert any((out / "_study" / "relate.work" / "tables").iterdir())  # the leftovers that broke the rerun
    again = run_study(cfg, out)
    assert sorted(again["ran"]) == ["_study/relate"] and not list(out.glob("_study/*.work"))
    assert _tables(out) == _tables(root / "a")


def test_explore_notebook_executes(study, tmp_path):
    from latentlab.study.report import NOTEBOOK_DIR, render_notebook

    _, root, _, _ = study
    store = root / "a" / "ae" / "extract" / "latents"
    html = render_notebook(NOTEBOOK_DIR / "explore_latents.ipynb", tmp_path / "explore.html",
                           {"store_path": str(store), "out_dir": str(tmp_path / "explore"),
                            "components": [1, 2], "umap_n": 100}, cwd=tmp_path)
    assert "PCA spectrum" in html.read_text()
    assert (tmp_path / "explore" / "gmm" / "gmm.csv").is_file() and (tmp_path / "explore" / "umap" / "umap.csv").is_file()


def test_config_errors(tmp_path):
    bad = dict(TINY, colour="blue")
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(bad))
    code, out, err = run_cli("run", str(tmp_path / "a.yaml"), "--out", str(tmp_path / "o"))
    assert code == 2 and err.count("\n") == 1 and "unknown key 'colour'" in err
    bad = dict(TINY, tokenizers={"x": {"arch": "vqgan"}})
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(bad))
    code, out, err = run_cli("run", str(tmp_path / "b.yaml"), "--out", str(tmp_path / "o"))
    assert code == 2 and err.count("\n") == 1 and "unknown arch 'vqgan'" in err
    bad = dict(TINY, sit={"train": {"stepz": 3}})
    with pytest.raises(Exception, match="stepz"):
        load_study_config(bad)
    assert not (tmp_path / "o").exists()
