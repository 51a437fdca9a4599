"""End to end: a tiny study on digits runs, reuses every stage, survives SIGKILL, renders its notebooks."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import run_cli
from latentlab.study.columns import representatives, study_metrics
from latentlab.study.config import TOKENIZER_STAGES, load_study_config
from latentlab.study.runner import run_study

FAST = {"steps": 12, "eval_every": 12, "ckpt_every": 6, "batch_size": 32}
TINY = {
    "dataset": "digits",
    "seed": 0,
    "device": "cpu",
    "tokenizers": {
        "pixels": {"arch": "pixels"},
        "ae": {"arch": "ae", "train": FAST},
        # a sweep of one point: the variant name "vae@kl_weight=1e-06" runs through every stage
        "vae": {"arch": "vae", "train": FAST, "sweep": {"model.kl_weight": [1e-6]}},
        "vavae": {"arch": "vavae", "train": FAST},
        "maetok": {"arch": "maetok", "train": FAST,
                   "decoder_finetune": {"steps": 6, "eval_every": 6, "ckpt_every": 6, "batch_size": 32}},
    },
    "primary": {"predictor": "lp_top1", "target": "gfd_lenet"},
    "sit": {"model": "SiT-tiny", "model_overrides": {"depth": 2, "hidden_size": 64},
            "train": {"steps": 30, "eval_every": 15, "ckpt_every": 15, "batch_size": 32}, "heldout_size": 32},
    "sample": {"n": 60, "steps": 4, "max_pngs": 8},
    "gmm": {"components": [1, 2, 4], "max_iter": 20},
    "probe": {"probe": {"epochs": 3}},
    "umap": {"n": 120, "pca_dim": 10},
    "metrics": {"extractor": "lenet", "bootstrap": 50},
    "diffusability": {"n_images": 64, "fd_boot": 10, "n_boot": 200, "id_samples": 300, "id_boot": 5},
    "report": True,
}
NAMES = ["pixels", "ae", "vae@kl_weight=1e-06", "vavae", "maetok"]
TRAINED = NAMES[1:]


# the study subprocesses' threads: the suite's own (`make test` runs 2 workers x 1 thread); tables depend on it
THREADS = int(os.environ.get("OMP_NUM_THREADS") or 1)


def _cli_env(tmp: Path) -> dict:
    env = {**os.environ, "LATENTLAB_PROGRESS": "0", "OMP_NUM_THREADS": str(THREADS)}
    env.pop("LATENTLAB_WORKSPACE", None)
    return env


def _run(cfg: Path, out: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "latentlab", "run", str(cfg), "--out", str(out), "--json"],
                          env=env, capture_output=True, text=True, timeout=600)


def _tables(out: Path) -> dict:
    """The study's tables, without wall-clock columns (the only thing allowed to differ between runs)."""
    tables = {}
    for name in ["runs.csv", "summary.csv", "comparisons.csv", "correlations.csv", "tables/gmm.csv",
                 "tables/sit_curves.csv", "tables/probe.csv", "tables/umap.csv", "tables/generation.csv",
                 "tables/recon.csv"]:
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


def _no_report(cfg: Path) -> Path:
    """The tiny study's config with report: false, for tests that compare tables (rendering costs a kernel)."""
    quiet = cfg.with_name("tiny-no-report.yaml")
    if not quiet.is_file():
        quiet.write_text(yaml.safe_dump({**yaml.safe_load(cfg.read_text()), "report": False}, sort_keys=False))
    return quiet


METRICS = study_metrics([1, 2, 4], "rfd_lenet", "gfd_lenet")
PER_IMAGE = [m.name for m in METRICS if m.kind == "per-image"]


def _check_tables(out: Path, seeds: int) -> None:
    """runs.csv, summary.csv, comparisons.csv and correlations.csv of the tiny study with `seeds` replicates."""
    runs = pd.read_csv(out / "runs.csv")
    assert list(runs.columns[:2]) == ["tokenizer", "replicate"] and len(runs) == len(NAMES) * seeds
    assert sorted(runs.replicate.unique()) == list(range(seeds))
    df = pd.read_csv(out / "summary.csv")
    assert list(df.tokenizer) == NAMES and df.columns[0] == "tokenizer"
    assert (df.seeds == seeds).all() and set(df.interval) == {"within-run" if seeds == 1 else "across-seeds"}
    for m in METRICS:  # every metric with its interval; per-image ones always have one for trained tokenizers
        assert {m.name, f"{m.name}_lo", f"{m.name}_hi"} <= set(df.columns), m.name
    trained = df[df.tokenizer.isin(TRAINED)]
    for col in ["psnr", "ssim", "lp_top1", "knn_top1", "sit_loss", "gfd_lenet"]:
        assert (trained[f"{col}_lo"] <= trained[col]).all() and (trained[col] <= trained[f"{col}_hi"]).all(), col
        assert (trained[f"{col}_hi"] > trained[f"{col}_lo"]).all(), col
    set_level = ["rankme", "gmm_nll_k2", "gain_k2", "sit_loss_gap", "sit_loss_auc", "gkid_lenet", "twonn"]
    assert df[[f"{c}_lo" for c in set_level]].isna().all().all() == (seeds == 1)  # no within-run interval for these
    for col in ["noise_robustness", "mask_robustness", "scale_psnr", "cond_acc_lenet"]:  # per-image or replicates
        assert (trained[f"{col}_lo"] <= trained[col]).all() and (trained[col] <= trained[f"{col}_hi"]).all(), col
    assert (trained[["sit_loss_linear", "sit_loss_raw", "gfd_floor_lenet", "response_hf"]].notna()).all().all()
    assert np.allclose(trained.sit_loss_gap, trained.sit_loss - trained.sit_loss_linear, rtol=1e-6)
    assert trained.hf_energy.isna().all() and df.loc[df.tokenizer == "pixels", "hf_energy"].notna().all()
    assert df.cond_acc_lenet.between(0, 1).all() and (df.gfd_floor_lenet > 0).all()
    assert df.loc[df.tokenizer == "pixels", "baseline"].all() and not df.loc[df.tokenizer != "pixels", "baseline"].any()
    assert df.loc[df.tokenizer == "pixels", "psnr"].iloc[0] == float("inf")
    assert (df.pca_dim == df.pca_dim.iloc[0]).all()  # one common PCA dimension
    comp = pd.read_csv(out / "comparisons.csv")
    assert set(comp.reference) == {"ae"} and set(comp.tokenizer) == set(NAMES) - {"ae"}
    assert set(comp.metric) <= set(PER_IMAGE) and {"sit_loss", "lp_top1"} <= set(comp.metric)
    assert ((comp.diff_lo <= comp["diff"]) & (comp["diff"] <= comp.diff_hi)).all() and comp.p.between(0, 1).all()
    corr = pd.read_csv(out / "correlations.csv")
    assert list(corr.columns[:3]) == ["predictor", "target", "n"]
    assert (corr.n == len(TRAINED)).all()  # the pixels baseline never counts
    assert corr.primary.iloc[0] and corr.predictor.iloc[0] == "lp_top1" and corr.target.iloc[0] == "gfd_lenet"
    assert corr.primary.sum() == 1 and (corr.loc[~corr.primary, "p_holm"] >= corr.loc[~corr.primary, "p_exact"]).all()
    assert set(corr.p_method.dropna()) == {"exact (all 24 permutations)"}
    assert not corr.predictor.str.contains("per_dim").any() and "pca_dim" not in set(corr.predictor)
    assert not corr.predictor.str.startswith("gmm_nll").any() and "gain_k2" in set(corr.predictor)
    kept = json.loads((out / "analysis.json").read_text())
    assert {"modes_heldout", "modes_bic"} <= set(kept["predictors"]) | set(kept["dropped_predictors"])
    assert {"noise_robustness", "mask_robustness", "response_hf", "twonn"} <= set(corr.predictor)
    assert "hf_energy" in kept["dropped_predictors"]  # token layouts: only the pixels baseline has a spectrum
    assert set(corr.target) == {"sit_loss", "sit_loss_gap", "sit_loss_auc", "gfd_lenet", "gkid_lenet", "cond_acc_lenet"}
    ok = corr.dropna(subset=["spearman_lo"])
    assert len(ok) and ((ok.spearman_lo <= ok.spearman + 1e-9) & (ok.spearman <= ok.spearman_hi + 1e-9)).all()
    _check_hypotheses(out, corr)


def _check_hypotheses(out: Path, corr: pd.DataFrame) -> None:
    """hypotheses.csv: correlations.csv's rows of the hypotheses' predictors (same rho and interval), Holm within
    the family of representatives; hypotheses_pairs.csv: every two of them per target, a with the larger |rho|."""
    from latentlab.analysis.hypotheses import COLUMNS, PAIR_COLUMNS
    from latentlab.analysis.inference import holm

    relate = out / "_study" / "relate"  # published at the top of the study once stages.PUBLISHED lists it
    hyp, pairs = (pd.read_csv(relate / f) for f in ("hypotheses.csv", "hypotheses_pairs.csv"))
    assert list(hyp.columns) == COLUMNS and list(pairs.columns) == PAIR_COLUMNS
    with_hyp = {m.name: m.hypothesis for m in METRICS if m.role == "predictor"}
    assert set(hyp.predictor) == set(corr.predictor) & set(with_hyp) and "psnr" not in set(hyp.predictor)
    assert (hyp.hypothesis == hyp.predictor.map(with_hyp)).all() and (hyp.n == len(TRAINED)).all()
    assert hyp.target.iloc[0] == "gfd_lenet"  # the primary target leads
    merged = hyp.merge(corr, on=["predictor", "target"], suffixes=("", "_corr"))
    assert len(merged) == len(hyp)
    for c in ["spearman", "spearman_lo", "spearman_hi", "p_exact"]:
        pd.testing.assert_series_equal(merged[c], merged[f"{c}_corr"], check_names=False)
    reps = hyp[hyp.representative]  # one per hypothesis and target, the ones the registry declares
    assert not reps.duplicated(["target", "hypothesis"]).any() and set(reps.hypothesis) == set(hyp.hypothesis)
    assert set(reps.predictor) == set(representatives(METRICS, list(corr.predictor)).values()) >= {"lp_top1", "rankme"}
    np.testing.assert_allclose(reps.p_holm, holm(reps.p_exact.to_numpy()))
    k = hyp.groupby("target").size()
    assert (pairs.groupby("target").size() == k * (k - 1) // 2).all() and (pairs.diff_abs_rho >= -1e-12).all()
    ok = pairs.dropna(subset=["diff_lo"])
    assert len(ok) and (ok.diff_lo <= ok.diff_hi).all() and ok.share_a_beats_b.between(0, 1).all()


def test_tiny_study_outputs(study):
    cfg, root, env, summary = study
    out = root / "a"
    _check_tables(out, 1)
    assert summary["primary"].startswith("Primary hypothesis, lp_top1 against gfd_lenet: Spearman rho = ")
    for fig in ["hypotheses", "nll_vs_components", "sit_loss_curves", "umap", "metrics_vs_gfid", "metrics_vs_sit_loss",
                "comparisons", "reconstructions", "samples"]:
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000, fig
    html = (out / "report.html").read_text()
    assert "Summary table" in html and "data:image/png;base64" in html and "Primary hypothesis, lp_top1" in html
    # the analysis opens with the hypotheses: the generated paragraph, then the ranking, before the summary table
    assert html.index("Which hypothesis predicts generation?") < html.index("Summary table")
    assert "The largest |rho| is that of" in html and "With n = 4 no rank correlation can reach p" in html
    assert "does not single out one hypothesis" in json.loads((out / "analysis.json").read_text())["hypotheses_result"]
    for tok in NAMES:
        for stage in TOKENIZER_STAGES:
            assert (out / tok / "seed-0" / stage / "stage.json").is_file()
    assert not list(out.glob("*/*/*.work"))


def test_rerun_reuses_every_stage(study):
    cfg, root, env, first = study
    again = run_study(cfg, root / "a")
    assert again["ran"] == [] and len(again["reused"]) == len(NAMES) * len(TOKENIZER_STAGES) + 3


def test_raising_seeds_reruns_only_the_new_replicate(study, tmp_path):
    """seeds 1 -> 2: replicate 0 is reused stage for stage; only replicate 1 and the study-wide tables run."""
    import shutil

    cfg, root, env, _ = study
    shutil.copytree(root / "a", tmp_path / "c")
    res = run_study({**yaml.safe_load(cfg.read_text()), "seeds": 2}, tmp_path / "c")
    new = {f"{t}/seed-1/{s}" for t in TRAINED for s in TOKENIZER_STAGES}
    new |= {f"pixels/seed-1/{s}" for s in ("probe", "diffusability", "sit", "sample", "gfid")}  # nothing to train
    assert set(res["ran"]) == new | {"_study/seed-1/gmm", "_study/relate"}
    assert {f"{t}/seed-0/{s}" for t in NAMES for s in TOKENIZER_STAGES} <= set(res["reused"])
    _check_tables(tmp_path / "c", 2)
    runs, first = pd.read_csv(tmp_path / "c" / "runs.csv"), pd.read_csv(root / "a" / "runs.csv")
    pd.testing.assert_frame_equal(runs[runs.replicate == 0].reset_index(drop=True), first)
    assert (runs[runs.replicate == 1].sit_loss.to_numpy() != first.sit_loss.to_numpy()).all()  # its own seeds
    assert (tmp_path / "c" / "report.html").is_file()


def test_sigkill_then_rerun_gives_identical_tables(study):
    """Kill a run inside a training stage, start it again: the tables equal the uninterrupted run's.

    To keep the test short, the killed run starts from a copy of the finished study with the
    later stages removed, so it must redo ae's SiT training and everything downstream (without the report).
    """
    import shutil

    cfg, root, env, _ = study
    cfg = _no_report(cfg)
    out = root / "b"
    shutil.copytree(root / "a", out)
    for p in ["ae/seed-0/sit", "ae/seed-0/sample", "ae/seed-0/gfid", "_study/relate", "runs.csv", "summary.csv",
              "comparisons.csv", "correlations.csv", "analysis.json", "tables", "figures", "report.html"]:
        (shutil.rmtree if (out / p).is_dir() else os.remove)(out / p)
    proc = subprocess.Popen([sys.executable, "-m", "latentlab", "run", str(cfg), "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    ckpt = out / "ae" / "seed-0" / "sit.work" / "run" / "state.pt"
    while time.time() < deadline and not ckpt.exists():  # in the middle of SiT training, after a checkpoint
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (out / "ae" / "seed-0" / "sit").exists() and not (out / "summary.csv").exists()
    done = _run(cfg, out, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _tables(out) == _tables(root / "a")


STUDY_WIDE = [("gmm", "latentlab.analysis.gmm.curves.plot_nll_vs_components"),  # after gmm.csv and gmm.json
              ("umap", "latentlab.analysis.umap.plot_umap"),                      # after the embedding
              ("relate", "latentlab.study.report.plot_hypothesis_ranking")]       # after tables/ was filled


def test_each_study_wide_stage_failing_partway_then_rerun_gives_identical_tables(study, monkeypatch):
    """Fail gmm, then umap, then relate partway (each rerun gets one stage further); the last rerun finishes."""
    import shutil

    cfg, root, env, _ = study
    cfg = _no_report(cfg)
    out = root / "c"
    shutil.copytree(root / "a", out)
    for p in ["_study", "runs.csv", "summary.csv", "comparisons.csv", "correlations.csv", "analysis.json", "tables",
              "figures", "report.html", "run_log.json"]:
        (shutil.rmtree if (out / p).is_dir() else os.remove)(out / p)
    where = {"gmm": out / "_study" / "seed-0", "umap": out / "_study", "relate": out / "_study"}

    def boom(*args, **kwargs):
        raise RuntimeError("failed on purpose")

    for stage, target in STUDY_WIDE:
        with monkeypatch.context() as m:
            m.setattr(target, boom)
            with pytest.raises(RuntimeError, match="on purpose"):
                run_study(cfg, out)
        assert (where[stage] / f"{stage}.work").is_dir() and not (where[stage] / stage).exists()
    assert any((out / "_study" / "relate.work" / "tables").iterdir())  # the leftovers that broke the rerun
    again = run_study(cfg, out)
    assert sorted(again["ran"]) == ["_study/relate"] and not list(out.glob("_study/**/*.work"))
    assert _tables(out) == _tables(root / "a")


def test_explore_notebook_executes(study, tmp_path):
    from latentlab.study.report import NOTEBOOK_DIR, render_notebook

    _, root, _, _ = study
    store = root / "a" / "ae" / "seed-0" / "extract" / "latents"
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


# ---------------------------------------------------------------- the stage graph and its executors

STUDY_TABLES = ["runs.csv", "summary.csv", "comparisons.csv", "correlations.csv", "analysis.json", "tables",
                "figures", "report.html", "run_log.json"]


def _without(src: Path, dst: Path, stages: list[str]) -> None:
    """A copy of the finished study `src` with these stages (and the published tables) removed."""
    import shutil

    shutil.copytree(src, dst)
    for p in stages + STUDY_TABLES:
        if (dst / p).is_dir():
            shutil.rmtree(dst / p)
        elif (dst / p).exists():
            os.remove(dst / p)


def _run_jobs(cfg: Path, out: Path, env: dict, *options: str) -> subprocess.CompletedProcess:
    """2 jobs, each with the threads of the fixture's one process (the thread count changes sums)."""
    env = {**env, "OMP_NUM_THREADS": str(2 * THREADS)}
    return subprocess.run([sys.executable, "-m", "latentlab", "run", str(cfg), "--out", str(out), "--json", *options],
                          env=env, capture_output=True, text=True, timeout=600)


def test_stage_graph_is_the_sequential_runs_stages(study):
    from latentlab.study.graph import stage_graph
    from latentlab.study.stages import SHARED_STAGES

    cfg, _, _, summary = study
    graph = stage_graph(*load_study_config(cfg))
    assert list(graph) == summary["ran"]  # the same stages, in the sequential runner's order
    two = stage_graph(*load_study_config({**yaml.safe_load(cfg.read_text()), "seeds": 2}))
    per_seed = [s for s in TOKENIZER_STAGES if s not in SHARED_STAGES]
    assert len(two) == 2 * len(TRAINED) * len(TOKENIZER_STAGES) + len(TOKENIZER_STAGES) + len(per_seed) + 4
    assert two[f"pixels/seed-1/{per_seed[0]}"][0] == (f"pixels/seed-0/{SHARED_STAGES[-1]}",)  # no second pixels
    for r in (0, 1):
        assert set(two[f"_study/seed-{r}/gmm"][0]) == {f"{t}/seed-{r if t != 'pixels' else 0}/extract" for t in NAMES}
    assert set(two["_study/umap"][0]) == {f"{t}/seed-0/extract" for t in NAMES}
    assert set(two["_study/relate"][0]) == set(two) - {"_study/relate"}
    chain = [s for s in two if s.startswith("ae/seed-1/")]
    assert [s.rpartition("/")[2] for s in chain] == list(TOKENIZER_STAGES)
    assert all(two[b][0] == (a,) for a, b in zip(chain, chain[1:]))
    assert two["ae/seed-1/tokenizer"][1] and two["ae/seed-1/sit"][1] and not two["pixels/seed-0/tokenizer"][1]


def test_chain_groups_cut_only_where_another_stage_waits(tmp_path):
    """--jobs N runs a chain's consecutive stages in one process: cut after extract (gmm and umap need it)."""
    from latentlab.study.cache import STAGE_FILE
    from latentlab.study.executors import GraphResult
    from latentlab.study.graph import chain_groups, stage_graph, stage_results

    graph = stage_graph(*load_study_config({**TINY, "seeds": 2}))
    groups = chain_groups(graph, set())
    assert sorted(j for g in groups for j in g) == sorted(graph)  # every stage once
    late = ["probe", "diffusability", "sit", "sample", "gfid"]
    assert ["ae/seed-1/tokenizer", "ae/seed-1/eval", "ae/seed-1/extract"] in groups
    assert [f"ae/seed-1/{s}" for s in late] in groups and [f"pixels/seed-1/{s}" for s in late] in groups
    assert ["_study/seed-0/gmm"] in groups and ["_study/umap"] in groups and ["_study/relate"] in groups
    cut = chain_groups(graph, {"ae/seed-0/sit"})  # a complete stage is left out, and cuts its chain
    assert ["ae/seed-0/probe", "ae/seed-0/diffusability"] in cut and ["ae/seed-0/sample", "ae/seed-0/gfid"] in cut
    from latentlab.study.executors import Job
    from latentlab.study.graph import most_successors_first

    jobs = [Job("b", [], ("a",)), Job("a", []), Job("c", [], ("a",)), Job("z", []), Job("d", [], ("b", "c"))]
    assert [j.id for j in most_successors_first(jobs)] == ["a", "b", "c", "z", "d"]  # a: 3 need it; b, c: 1
    members = {"ae/seed-0/sample..gfid": ["ae/seed-0/sample", "ae/seed-0/gfid"]}
    res = GraphResult(failed={"ae/seed-0/sample..gfid": "log"}, blocked=["_study/relate"])
    by = stage_results(res, members, tmp_path)  # nothing of the group finished: its first stage failed
    assert by.failed == {"ae/seed-0/sample": "log"} and by.blocked == ["_study/relate", "ae/seed-0/gfid"]
    (tmp_path / "ae/seed-0/sample").mkdir(parents=True)
    (tmp_path / "ae/seed-0/sample" / STAGE_FILE).write_text('{"seconds": 3.0}')
    by = stage_results(res, members, tmp_path)  # sample finished, then gfid failed
    assert by.ran == ["ae/seed-0/sample"] and by.seconds == {"ae/seed-0/sample": 3.0}
    assert by.failed == {"ae/seed-0/gfid": "log"} and by.blocked == ["_study/relate"]


def test_jobs_2_a_failed_stage_and_submitit_give_the_tables_of_jobs_1(study, tmp_path):
    """--jobs 2 redoes part of the study with one stage failing: only its dependents stop, the rerun resubmits
    only them and the tables equal the in-process run's; submitit's local executor does the same."""
    cfg, root, env, _ = study
    cfg = _no_report(cfg)
    out = tmp_path / "j2"
    _without(root / "a", out, ["ae/seed-0/sample", "ae/seed-0/gfid", "vavae/seed-0/gfid", "_study/relate"])
    run = out / "ae" / "seed-0" / "sit" / "run"
    run.rename(run.with_name("moved"))  # ae's sample cannot load its SiT run: it fails, while vavae's gfid runs
    proc = _run_jobs(cfg, out, env, "--jobs", "2")
    assert proc.returncode == 2 and proc.stderr.splitlines()[-1].startswith("error: "), proc.stderr[-3000:]
    # ae's sample and gfid ran as one job (one process, one log), which stopped at the failure
    assert "1 stage(s) failed: ae/seed-0/sample (log: " in proc.stderr and "ae.seed-0.sample..gfid.log" in proc.stderr
    assert "2 stage(s) that need them did not run" in proc.stderr  # ae's gfid and relate
    assert (out / "vavae" / "seed-0" / "gfid" / "stage.json").is_file()  # independent of the failure: it ran
    assert not (out / "ae" / "seed-0" / "gfid").exists() and not (out / "_study" / "relate").exists()
    assert (out / "_jobs" / "ae.seed-0.sample..gfid.log").is_file()
    run.with_name("moved").rename(run)
    proc = _run_jobs(cfg, out, env, "--jobs", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert sorted(res["ran"]) == ["_study/relate", "ae/seed-0/gfid", "ae/seed-0/sample"]
    assert res["executor"] == "local" and not res["failed"]
    assert _tables(out) == _tables(root / "a")
    sub = tmp_path / "sub"
    _without(out, sub, ["ae/seed-0/gfid", "_study/relate"])
    proc = _run_jobs(cfg, sub, env, "--executor", "submitit", "--cluster", "local", "--jobs", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(json.loads(proc.stdout)["ran"]) == ["_study/relate", "ae/seed-0/gfid"]
    assert _tables(sub) == _tables(root / "a") and list((sub / "_submitit").rglob("*.out"))


def test_one_stage_needs_its_upstream_stages(study, tmp_path):
    cfg, root, _, _ = study
    out = tmp_path / "s"
    _without(root / "a", out, ["ae/seed-0/sit", "ae/seed-0/sample"])
    code, _, err = run_cli("run", str(cfg), "--out", str(out), "--stage", "ae/seed-0/sample")
    assert code == 2 and err.count("\n") == 1 and "needs ae/seed-0/sit, which is not complete" in err, err
    code, _, err = run_cli("run", str(cfg), "--out", str(out), "--stage", "ae/seed-9/sit")
    assert code == 2 and "is not a stage of this study" in err
    code, _, err = run_cli("run", str(cfg), "--out", str(tmp_path / "new"), "--stage", "ae/seed-0/sit")
    assert code == 2 and "not a started study" in err and not (tmp_path / "new").exists()
    code, stdout, err = run_cli("run", str(cfg), "--out", str(out), "--stage", "vavae/seed-0/gfid", "--json")
    assert code == 0 and json.loads(stdout)["reused"]  # complete: reused, nothing runs
    assert not (out / "ae" / "seed-0" / "sit").exists()


def test_executor_section_and_command_line(tmp_path):
    from latentlab.errors import LatentlabError
    from latentlab.study.config import executor_config

    cfg, _ = load_study_config({**TINY, "executor": {"jobs": 4, "partition": "gpu", "kind": "submitit"}})
    opts = executor_config(cfg, jobs=2, kind="local", gpus_per_job=None)
    assert (opts.jobs, opts.partition, opts.kind, opts.gpus_per_job) == (2, "gpu", "local", 1)
    for bad, words in [({"kind": "ray"}, "unknown executor"), ({"partion": "gpu"}, "partion"), ({"jobs": 0}, ">= 1")]:
        with pytest.raises(LatentlabError, match=words):
            load_study_config({**TINY, "executor": bad})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(TINY))
    code, _, err = run_cli("run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "o"), "--gpus-per-job", "2")
    assert code == 2 and err.count("\n") == 1 and "no GPU" in err and not (tmp_path / "o").exists()


def test_report_out_never_replaces_a_file_latentlab_did_not_write(study, tmp_path):
    from latentlab.errors import LatentlabError
    from latentlab.outputs import check_output_file
    from latentlab.study.report import INJECTED

    _, root, _, _ = study
    mine = tmp_path / "notes.html"
    mine.write_text("<html>my own notes</html>")
    code, _, err = run_cli("report", str(root / "a"), "--out", str(mine))
    assert code == 2 and err.count("\n") == 1 and "did not write" in err and mine.read_text() == "<html>my own notes</html>"
    code, _, err = run_cli("report", str(root / "a"), "--out", str(tmp_path))
    assert code == 2 and "is a folder" in err
    check_output_file(root / "a" / "report.html", INJECTED)  # a report latentlab rendered: may be replaced
    with pytest.raises(LatentlabError, match="does not exist"):
        check_output_file(tmp_path / "no" / "such" / "r.html", INJECTED)
