"""Benchmark: wall time of `mlops train` + `mlops validate` for the example classifier.

Each run uses a fresh copy of configs/ and models/ in a temp git repository with an empty
MLflow store, and calls the real CLI in subprocesses, so the figure includes interpreter
start-up, imports, MLflow store creation, the reproducibility retrain and the Evidently report.

    .venv/bin/python benchmarks/train_validate.py --runs 3

Writes .mlops/benchmarks/train_validate.{json,md} and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipelines.release.commit import GitIdentity

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 60.0


def _git(root: Path, *args: str) -> None:
    env = {**os.environ, **GitIdentity("bench", "bench@example.com").environ()}
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, env=env)


def one_run(workdir: Path) -> dict[str, float]:
    """Train and validate once in a fresh project under ``workdir``; return step timings."""
    root = workdir / "project"
    shutil.copytree(REPO / "configs", root / "configs")
    shutil.copytree(REPO / "models", root / "models", ignore=shutil.ignore_patterns("__pycache__"))
    (root / ".gitignore").write_text(".mlops/\n")
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "bench")
    env = {
        k: v for k, v in os.environ.items() if k not in {"MLFLOW_TRACKING_URI", "MLOPS_STATE_DIR"}
    }
    timings = {}
    for step in ("train", "validate"):
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "pipelines", step, "--configs", str(root / "configs")],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
        timings[step] = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"mlops {step} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    timings["total"] = timings["train"] + timings["validate"]
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / ".mlops" / "benchmarks")
    args = parser.parse_args()

    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-tv-") as tmp:
            runs.append(one_run(Path(tmp)))
        print(
            f"run {i + 1}/{args.runs}: " + ", ".join(f"{k} {v:.1f} s" for k, v in runs[-1].items()),
            file=sys.stderr,
        )
    medians = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    report = {
        "runs": runs,
        "median_s": medians,
        "target_s": TARGET_S,
        "meets_target": medians["total"] < TARGET_S,
        "cpus": os.cpu_count(),
    }
    lines = [
        f"### train + validate, example classifier ({args.runs} runs, {os.cpu_count()} cores)",
        "",
        "| step | median (s) | min (s) | max (s) |",
        "|---|---|---|---|",
    ]
    for key in ("train", "validate", "total"):
        values = [r[key] for r in runs]
        lines.append(f"| {key} | {medians[key]:.1f} | {min(values):.1f} | {max(values):.1f} |")
    verdict = "meets" if report["meets_target"] else "MISSES"
    lines += ["", f"Median total {medians['total']:.1f} s: {verdict} the {TARGET_S:.0f} s target."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_validate.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "train_validate.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
