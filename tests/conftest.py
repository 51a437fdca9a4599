import os

os.environ.setdefault("LATENTLAB_PROGRESS", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see latentlab/__init__.py

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or min(2, os.cpu_count() or 1)))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _workspace(tmp_path, monkeypatch):
    """Every test gets its own workspace directory."""
    monkeypatch.setenv("LATENTLAB_WORKSPACE", str(tmp_path / "workspace"))
    yield


def run_cli(*args: str):
    """Run the CLI in-process; returns (exit_code, stdout, stderr)."""
    import contextlib
    import io

    from latentlab.cli import cli

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main(args=list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, out.getvalue(), err.getvalue()
