"""Start-up time of the CLI: `latentlab --help` (and a few COMMAND --help) against `python -c "import numpy, click"`.

Each command runs as a whole process, the two in turn (A B A B ...) after one warm-up each, so a drift in
the machine's speed hits both; the figure is the median of the pairwise ratios. Nothing is asserted.

    .venv/bin/python benchmarks/bench_cli.py            # 15 pairs per command
    .venv/bin/python benchmarks/bench_cli.py --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

REFERENCE = [sys.executable, "-c", "import numpy, click"]
COMMANDS = [["--help"], ["train-sit", "--help"], ["fit-gmm", "--help"], ["datasets"]]


def wall(cmd: list[str]) -> float:
    """Seconds one process takes from start to exit."""
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15, help="pairs per command")
    args = ap.parse_args()
    print(f"reference: {' '.join(REFERENCE[1:])}")
    for extra in COMMANDS:
        cmd = [sys.executable, "-m", "latentlab", *extra]
        wall(cmd), wall(REFERENCE)  # warm-up: file caches
        pairs = [(wall(cmd), wall(REFERENCE)) for _ in range(args.runs)]
        a, b = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        ratio = statistics.median(p[0] / p[1] for p in pairs)
        print(f"latentlab {' '.join(extra):18s} median {a:.3f} s, reference {b:.3f} s, ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
