"""The shared training loop: schedule, EMA, determinism, resume, non-finite stop, DDP."""

import numpy as np
import pytest
import torch
from torch import nn

from latentlab.errors import LatentlabError
from latentlab.io import load_safetensors, load_torch_state
from latentlab.schedules import get_lr
from latentlab.trainer import TrainConfig, TrainTask, index_batch, train, update_ema


class Regression(TrainTask):
    """y = X w* + noise, fitted by a small MLP; an optional poison step returns NaN."""

    def __init__(self, seed=0, poison_step=None):
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))
        g = torch.Generator().manual_seed(123)
        self.X = torch.randn(256, 5, generator=g)
        self.y = self.X @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.05 * torch.randn(256, generator=g)
        self.seed, self.poison_step = seed, poison_step

    def batch(self, step, rank, world_size, per_rank):
        idx = torch.from_numpy(index_batch(len(self.X), per_rank, step, self.seed, rank, world_size))
        return self.X[idx], self.y[idx]

    def loss(self, model, batch, step, generator):
        x, y = batch
        noise = 1e-3 * torch.randn(x.shape, generator=generator)  # exercises the per-step generator
        mse = (model(x + noise).squeeze(-1) - y).pow(2).mean()
        if step == self.poison_step:
            mse = mse * float("nan")
        return {"loss": mse, "mse": mse}

    def evaluate(self, ema_model, step):
        return {"mse_all": float((ema_model(self.X).squeeze(-1) - self.y).pow(2).mean())}

    def run_config(self):
        return {"kind": "test-regression"}


def _cfg(**kw):
    base = dict(steps=40, batch_size=32, lr=1e-2, warmup_steps=5, log_every=5, eval_every=20, ckpt_every=20,
                device="cpu", ema_decay=0.9)
    base.update(kw)
    return TrainConfig(**base)


def test_lr_schedule_warmup_and_cosine_endpoints():
    cfg = TrainConfig(steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert get_lr(0, cfg) == pytest.approx(0.1)
    assert get_lr(9, cfg) == pytest.approx(1.0)
    assert get_lr(10, cfg) == pytest.approx(1.0)
    assert get_lr(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos(pi/2) = 0
    assert get_lr(110, cfg) == pytest.approx(0.1)


def test_update_ema_closed_form():
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    ea = [p.detach().clone() for p in a.parameters()]
    update_ema(a, b, 0.75)
    for p, p0, pb in zip(a.parameters(), ea, b.parameters()):
        assert torch.allclose(p, 0.75 * p0 + 0.25 * pb)


def test_index_batch_covers_each_epoch_and_splits_ranks():
    n = 10
    seen = np.concatenate([index_batch(n, 5, s, seed=3) for s in range(2)])
    assert sorted(seen.tolist()) == list(range(n))  # one epoch = a permutation
    single = index_batch(n, 4, 7, seed=3)
    split = np.concatenate([index_batch(n, 2, 7, seed=3, rank=r, world_size=2) for r in range(2)])
    assert np.array_equal(single, split)


def test_training_lowers_the_loss_and_writes_the_run(tmp_path):
    s = train(Regression(), _cfg(steps=60), tmp_path / "run")
    lines = [l for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = float(__import__("json").loads(lines[0])["mse"])
    assert s["final"]["mse"] < 0.5 * first
    for f in ("config.json", "model.safetensors", "ema.safetensors", "state.pt"):
        assert (tmp_path / "run" / f).is_file()
    assert load_torch_state(tmp_path / "run" / "state.pt")["step"] == 60
    assert "mse_all" in s["eval"]


def test_resume_equals_uninterrupted_run(tmp_path):
    train(Regression(), _cfg(), tmp_path / "full")
    # interrupt a 40-step run after its step-20 checkpoint (a NaN at step 25), then resume it
    task = Regression(poison_step=25)
    with pytest.raises(LatentlabError, match=r"step 25.*'loss'"):
        train(task, _cfg(), tmp_path / "cut")
    assert load_torch_state(tmp_path / "cut" / "state.pt")["step"] == 20
    with pytest.raises(LatentlabError, match="already holds a run"):
        train(Regression(), _cfg(), tmp_path / "cut")
    train(Regression(), _cfg(), tmp_path / "cut", resume=True)
    for f in ("model.safetensors", "ema.safetensors"):
        a, b = load_safetensors(tmp_path / "full" / f), load_safetensors(tmp_path / "cut" / f)
        assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(LatentlabError, match="different configuration"):
        train(Regression(), _cfg(lr=0.5), tmp_path / "cut", resume=True)


class _Det(Regression):
    """No per-rank noise, so two ranks must reproduce one process up to float rounding."""

    def loss(self, model, batch, step, generator):
        x, y = batch
        mse = (model(x).squeeze(-1) - y).pow(2).mean()
        return {"loss": mse}


def _ddp_worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        train(_Det(), _cfg(steps=10, eval_every=100, ckpt_every=100), out_dir)
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_gloo_ddp_matches_single_process(tmp_path):
    import torch.multiprocessing as mp

    train(_Det(), _cfg(steps=10, eval_every=100, ckpt_every=100), tmp_path / "single")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "ddp")), nprocs=2, join=True)
    a = load_safetensors(tmp_path / "single" / "model.safetensors")
    b = load_safetensors(tmp_path / "ddp" / "model.safetensors")
    init = _Det().model.state_dict()
    assert not all(torch.allclose(a[k], init[k]) for k in a)  # training moved the weights
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


# ---------------------------------------------------------------- EMA warm-up, half-life cap, plateau

def test_ema_decay_matches_diffusers_ema_model():
    """decay_k and the averaged weights equal diffusers' EMAModel(use_ema_warmup=True, inv_gamma=1)."""
    from diffusers.training_utils import EMAModel

    from latentlab.schedules import ema_decay_at

    cfg = TrainConfig(steps=500, ema_decay=0.99, ema_power=0.75, ema_half_life=None)
    model, ema = nn.Linear(3, 2), nn.Linear(3, 2)
    ref = EMAModel(model.parameters(), decay=0.99, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    g = torch.Generator().manual_seed(0)
    for step in range(200):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g))   # a stand-in optimizer step
        assert ema_decay_at(step, cfg) == pytest.approx(ref.get_decay(ref.optimization_step + 1), abs=1e-15)
        update_ema(ema, model, ema_decay_at(step, cfg))
        ref.step(model.parameters())
    for pe, ps in zip(ema.parameters(), ref.shadow_params):
        assert torch.allclose(pe, ps, atol=1e-5)
    assert ema_decay_at(199, cfg) < 0.99 and ema_decay_at(1000, cfg) == 0.99    # capped at the configured decay


def _weight_before(cfg, k, decay_at):
    """Share of the final EMA that still comes from the models of steps < k (closed form of the recursion)."""
    w = 1.0
    for step in range(k, cfg.steps):
        w *= decay_at(step, cfg)
    return w


def test_default_ema_half_life_is_at_most_a_tenth_of_a_short_run():
    from latentlab.schedules import ema_decay_at, ema_max_decay
    from latentlab.config import train_config

    cfg = train_config({"ema_decay": 0.999, "warmup_steps": 50}, {"steps": 600})
    d = ema_max_decay(cfg)
    assert np.log(0.5) / np.log(d) == pytest.approx(60.0)            # half-life = 10% of 600 steps
    assert ema_max_decay(train_config({"ema_decay": 0.999}, {"steps": 100_000})) == 0.999   # long runs: as set
    # the case: decay 0.999 after a 50-step warm-up kept 58% of the step-50 model at step 600
    old = _weight_before(cfg, 50, lambda s, c: 0.999)
    assert old == pytest.approx(0.999 ** 550) and old > 0.57
    assert _weight_before(cfg, 50, ema_decay_at) < 1e-3
    # a decay the user sets is used as given
    user = train_config({"ema_decay": 0.999}, {"steps": 600, "ema_decay": 0.999})
    assert user.ema_half_life is None and ema_max_decay(user) == 0.999


class Scripted(Regression):
    """Regression whose monitored evaluation follows a script, one value per evaluation."""

    monitor = "score"

    def __init__(self, values):
        super().__init__()
        self.values = values

    def evaluate(self, ema_model, step):
        return {"score": self.values[step // 10 - 1]}


def test_until_plateau_stops_and_a_resume_does_nothing_more(tmp_path):
    from latentlab.schedules import plateau_reached

    vals = [1.0, 0.5, 0.4, 0.399, 0.3985, 0.398, 0.3, 0.2]
    cfg = _cfg(steps=80, eval_every=10, ckpt_every=100, until="plateau", plateau_evals=2, plateau_tol=0.01)
    assert [plateau_reached(vals[:i], cfg) for i in range(1, 6)] == [False, False, False, False, True]
    s = train(Scripted(vals), cfg, tmp_path / "run")
    assert s["steps_done"] == 50 and s["stopped"] == "plateau" and s["eval"]["score"] == 0.3985
    assert load_torch_state(tmp_path / "run" / "state.pt")["step"] == 50       # checkpointed where it stopped
    again = train(Scripted(vals), cfg, tmp_path / "run", resume=True)
    assert again["steps_done"] == 50 and again["stopped"] == "plateau"
    full = train(Scripted(vals), _cfg(steps=80, eval_every=10, ckpt_every=100), tmp_path / "full")
    assert full["steps_done"] == 80 and full["stopped"] == "steps"
    with pytest.raises(LatentlabError, match="plateau"):
        train(Regression(), _cfg(until="plateau"), tmp_path / "nomonitor")
