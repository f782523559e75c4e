"""``make demo`` again and again (issue 12): does the main job promote its candidate every time?

Runs ``scripts/demo.py`` (what ``make demo`` runs) ``--runs`` times in a row, every other run
with a process spinning on one core (``taskset -c 0`` when available), and records each run's
exit code, duration, outcome and reason from the demo's rollout result. The candidate is as
good as stable (another regularisation ``C``), so any rollback is a false one.

    .venv/bin/python benchmarks/demo_repeat.py --runs 10

Writes ``.mlops/bench/demo_repeat.{json,md}`` and prints the markdown. Exit 0 when every run
promoted, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULT = REPO_ROOT / ".mlops" / "demo" / "repo" / ".mlops" / "results" / "rollout-staging.json"

log = logging.getLogger("demo_repeat")


def _spinner() -> subprocess.Popen[bytes]:
    """A process that keeps one core busy (core 0 when ``taskset`` exists)."""
    spin = [sys.executable, "-c", "while True: pass"]
    taskset = shutil.which("taskset")
    return subprocess.Popen([taskset, "-c", "0", *spin] if taskset else spin)


def _load() -> str:
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def one_run(index: int, busy_core: bool, out: Path) -> dict[str, Any]:
    """One ``scripts/demo.py --env staging``; its output goes to ``out/run-<index>.log``."""
    RESULT.unlink(missing_ok=True)
    load = _load()
    spinner = _spinner() if busy_core else None
    started = time.monotonic()
    try:
        with (out / f"run-{index:02d}.log").open("wb") as output:
            code = subprocess.run(
                [sys.executable, "scripts/demo.py", "--env", "staging"],
                cwd=REPO_ROOT,
                stdout=output,
                stderr=subprocess.STDOUT,
                check=False,
            ).returncode
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    result = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    run = {
        "index": index,
        "busy_core": busy_core,
        "load_before": load,
        "exit_code": code,
        "seconds": round(time.monotonic() - started, 1),
        "outcome": result.get("outcome", "no result"),
        "reason": result.get("reason", ""),
        "decided_by": result.get("decided_by", []),
        "failed_requests": result.get("failed_requests"),
    }
    log.info("run %d (busy core: %s): exit %d, %s", index, busy_core, code, run["outcome"])
    return run


def render(runs: list[dict[str, Any]]) -> str:
    """The runs as a markdown table with a one-line summary."""
    promoted = sum(r["outcome"] == "promoted" and r["exit_code"] == 0 for r in runs)
    seconds = [r["seconds"] for r in runs]
    lines = [
        "# make demo, repeated",
        "",
        f"{promoted} of {len(runs)} runs promoted the candidate "
        f"({sum(r['busy_core'] for r in runs)} with a busy core); "
        f"duration median {statistics.median(seconds):.0f} s [{min(seconds):.0f}-"
        f"{max(seconds):.0f}] on {os.cpu_count()} cores.",
        "",
        "| run | busy core | load before | exit | outcome | failed requests | seconds | reason |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['index']} | {'yes' if r['busy_core'] else 'no'} | {r['load_before']} "
            f"| {r['exit_code']} | {r['outcome']} | {r['failed_requests']} | {r['seconds']} "
            f"| {r['reason'][:90]} |"
        )
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    """Run the demo ``--runs`` times; 0 when every run promoted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / ".mlops" / "bench")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logs = args.out / "demo_repeat"
    logs.mkdir(parents=True, exist_ok=True)
    runs = [one_run(index, index % 2 == 1, logs) for index in range(args.runs)]
    (args.out / "demo_repeat.json").write_text(json.dumps(runs, indent=2) + "\n")
    markdown = render(runs)
    (args.out / "demo_repeat.md").write_text(markdown)
    sys.stdout.write(markdown)
    return 0 if all(r["outcome"] == "promoted" and r["exit_code"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
