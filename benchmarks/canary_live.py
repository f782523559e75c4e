"""Live decision quality: rollouts through the real gateway and servers (issue 12 §7).

``benchmarks/decision_quality.py`` measures the judge on simulated streams. This one runs the
whole rollout for real on this machine: a scratch project with two identical versions (v1 and
a retrained v2), a fresh local environment per run (Caddy front and gateway, two ``bentoml
serve`` processes), the synthetic traffic as its own process, the judge reading the gateway's
access log, and git commits for every transition.

* **A/A**: ``--aa-runs`` rollouts of v2, identical to v1; half of them with a busy process
  spinning on one core (``taskset -c 0`` when available). Any rollback is a false rollback.
* **Faults**, ``--fault-runs`` each, injected live:

  - latency +50 %: the fault sidecar in front of the canary delays each ``/predict`` by half of
    stable's median gateway latency. The sidecar is a proxy hop of its own, so in the latency
    and error runs stable goes through a pass-through sidecar too, and the delay is half of
    stable's median through it, measured in a calibration rollout (both sidecars at 0 ms)
    before the fault runs; the canary/stable median ratio the gateway saw is reported;
  - errors +2 points: the sidecar answers 2 % of the canary's ``/predict`` with a 503;
  - accuracy −5 points on labelled traffic only: the traffic process labels a share of the
    canary's correct answers with another class (predictions, latency and errors unchanged).

Each fault counts as caught when the rollout is rolled back by the signal that fault should
move. Beside each row, the simulated benchmark's figures for the same profile and fault sizes
(:mod:`harness.simulation`, ``--sim-runs`` streams each).

    .venv/bin/python benchmarks/canary_live.py                              # 30 A/A + 3 x 10
    .venv/bin/python benchmarks/canary_live.py --aa-runs 2 --fault-runs 1   # a smoke run

Writes ``.mlops/bench/canary_live.{json,md}`` and prints the markdown. Exit 0 when the
targets hold (false rollbacks ≤ 2 %, each fault caught in ≥ 95 % of its runs), 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from harness.simulation import Fault, Traffic, wilson_upper  # noqa: E402
from harness.simulation import run_rollout as simulate  # noqa: E402
from harness.traffic import Scenario, TrafficOptions  # noqa: E402
from pipelines import rollout  # noqa: E402
from pipelines.canary.judge import Action  # noqa: E402
from pipelines.config.canary import CanaryConfig  # noqa: E402
from pipelines.config.loader import ConfigSet, load_config_set  # noqa: E402
from pipelines.environments.local import reconcile  # noqa: E402
from pipelines.package import PackageResult  # noqa: E402
from pipelines.rollout.sources import gateway_access_log, parse_access_line  # noqa: E402
from pipelines.workdir import Workdir  # noqa: E402

log = logging.getLogger("canary_live")

MLOPS = str(Path(sys.executable).with_name("mlops"))
PROFILE = Path("configs/variants/live-bench/canary.yaml")
RATE, CONCURRENCY, LABEL_DELAY_S = 200.0, 16, 0.5
ERROR_POINTS, LATENCY_FACTOR, ACCURACY_POINTS = 0.02, 1.5, 0.05
CALIBRATION_RUNS = 1  # rollouts with 0 ms sidecars on both versions, before the fault runs
EXPECTED = {
    "latency": ("latency", "hard_limit.p99_latency_ms"),
    "errors": ("error_rate", "hard_limit.error_rate"),
    "accuracy": ("quality.",),
}
SIMULATED = {"aa": Fault.NONE, "latency": Fault.LATENCY, "errors": Fault.ERRORS}
SIMULATED["accuracy"] = Fault.ACCURACY
READING = (
    "A/A: every rollback is a false rollback; requests to decide are those to promotion. "
    "Faults: caught = rolled back by the signal the fault should move; requests to decide "
    "count until the rollback. Targets: false rollbacks ≤ 2 %, each fault caught in ≥ 95 %."
)


@dataclass
class Run:
    """One live rollout and how it ended."""

    kind: str
    index: int
    busy_core: bool
    outcome: str
    timed_out: bool
    decided_by: list[str]
    reason: str
    canary_requests: int
    seconds: float
    fault: dict[str, Any] = field(default_factory=dict)
    gateway_median_ms: dict[str, float] = field(default_factory=dict)
    unparsable_lines: int = 0


@dataclass(frozen=True)
class Scratch:
    """The scratch project the runs share: configs, MLflow store, Bentos, git."""

    root: Path
    config: ConfigSet
    canary: CanaryConfig
    workdir: Workdir
    packages: dict[int, PackageResult]
    accuracy: float
    max_duration_s: float = 600.0


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(root), *args], check=True, capture_output=True, text=True
    ).stdout


def _mlops(root: Path, *args: str) -> None:
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true"}
    done = subprocess.run([MLOPS, *args], cwd=root, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"mlops {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def prepare(folder: Path, profile: Path) -> Scratch:
    """A scratch project with v1 and v2 (the same training config), both packaged.

    ``profile`` is the canary config, relative to the project (``configs/...``).
    """
    from pipelines import train

    root = folder / "repo"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for name in ("configs", "models"):
        shutil.copytree(REPO_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    (root / ".gitignore").write_text(".mlops/\n__pycache__/\n")
    _git(root, "init", "-q", "-b", "main")
    _git(root, "config", "user.name", "canary bench")
    _git(root, "config", "user.email", "bench@localhost")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "bench: scratch project")
    config = load_config_set(root / "configs", overrides={"canary": root / profile})
    workdir = Workdir.for_project(config.root)
    packages: dict[int, PackageResult] = {}
    accuracy = 0.0
    for number in (1, 2):
        result = train.run(config, workdir)
        _mlops(root, "package", "--version", result.model_version)
        packages[number] = PackageResult.model_validate_json(
            (workdir.results / "package.json").read_text()
        )
        holdout = result.metrics.get("holdout", {}).get("accuracy")
        accuracy = float(getattr(holdout, "value", holdout) or 0.0) or accuracy
    return Scratch(root, config, config.canary, workdir, packages, accuracy or 0.9)


def _fresh_env(scratch: Scratch, name: str) -> None:
    """An empty ``deploy/<name>.yaml``, then v1 released as stable (no judging)."""
    from pipelines.release.state import EnvState, render_state, state_path

    path = state_path(scratch.root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = scratch.config.train.registered_model_name
    path.write_text(render_state(EnvState(environment=name, model=model)))
    _git(scratch.root, "add", str(path))
    _git(scratch.root, "commit", "-q", "-m", f"bench: environment {name}")
    initial = _rollout(scratch, name, 1, None)
    if initial.outcome is not rollout.RolloutOutcome.PROMOTED:
        raise RuntimeError(f"{name}: the initial release failed: {initial.reason}")


def _rollout(
    scratch: Scratch, env: str, version: int, traffic: TrafficOptions | None
) -> rollout.RolloutResult:
    return rollout.run(
        scratch.config,
        scratch.canary,
        scratch.workdir,
        env,
        package=scratch.packages[version],
        version=version,
        traffic=traffic,
        check_interval_s=5.0,
        max_duration_s=scratch.max_duration_s,
        bentoml_home=Path(os.environ.get("BENTOML_HOME") or scratch.workdir.root / "bentoml"),
    )


def _spinner() -> subprocess.Popen[bytes]:
    """A process that keeps one core busy (core 0 when ``taskset`` exists)."""
    spin = [sys.executable, "-c", "while True: pass"]
    taskset = shutil.which("taskset")
    return subprocess.Popen([taskset, "-c", "0", *spin] if taskset else spin)


def _medians(access_log: Path, offset: int) -> dict[str, float]:
    """Each version's median gateway latency (ms) in the access log after ``offset``."""
    by_version: dict[str, list[float]] = {}
    if not access_log.is_file():
        return {}
    for line in access_log.read_bytes()[offset:].splitlines():
        try:
            answer = parse_access_line(json.loads(line))
        except ValueError:
            continue
        if answer is not None and answer.version is not None and answer.status == 200:
            by_version.setdefault(answer.version, []).append(answer.latency_ms)
    return {v: round(statistics.median(x), 3) for v, x in by_version.items()}


def _canary_requests(result: rollout.RolloutResult) -> int:
    """Canary requests judged until the decision: each step's last check, summed."""
    last = {check.step_index: check.canary.requests for check in result.checks}
    return sum(last.values())


def live_run(
    scratch: Scratch,
    kind: str,
    index: int,
    traffic: TrafficOptions,
    *,
    busy_core: bool = False,
    fault: dict[str, Any] | None = None,
    stable_sidecar: bool = False,
) -> Run:
    """One rollout of v2 in a fresh environment, torn down afterwards.

    ``stable_sidecar`` puts a pass-through fault sidecar (0 ms, no errors) in front of stable,
    so that a fault sidecar's own hop in front of the canary is not part of the fault.
    """
    env = f"live-{kind}-{index:03d}-{int(time.time()) % 100_000}"
    spinner = None
    try:
        _fresh_env(scratch, env)
        if stable_sidecar:
            reconcile.set_fault(env, scratch.workdir.root, "1", reconcile.FaultSpec())
        access_log = gateway_access_log(scratch.workdir.root, env)
        offset = access_log.stat().st_size if access_log.is_file() else 0
        spinner = _spinner() if busy_core else None
        started = time.monotonic()
        result = _rollout(scratch, env, 2, traffic)
        seconds = time.monotonic() - started
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
        reconcile.down(env, scratch.workdir.root)
    unparsable = sum("unparsable" in line for line in result.evidence)
    run = Run(
        kind=kind,
        index=index,
        busy_core=busy_core,
        outcome=result.outcome.value,
        timed_out=result.timed_out,
        decided_by=list(result.decided_by),
        reason=result.reason,
        canary_requests=_canary_requests(result),
        seconds=round(seconds, 1),
        fault=fault or {},
        gateway_median_ms=_medians(access_log, offset),
        unparsable_lines=unparsable,
    )
    log.info("%s #%d: %s (%s)", kind, index, run.outcome, run.reason[:120])
    return run


def _traffic(**update: Any) -> TrafficOptions:
    base = TrafficOptions(rate=RATE, concurrency=CONCURRENCY, label_delay_s=LABEL_DELAY_S)
    return base.model_copy(update=update)


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def summarize(kind: str, runs: list[Run]) -> dict[str, Any]:
    """Rollbacks, catches (by the expected signal) and the requests each decision needed."""
    rolled_back = [r for r in runs if r.outcome == "rolled_back"]
    expected = EXPECTED.get(kind, ())
    caught = [r for r in rolled_back if any(s.startswith(expected) for s in r.decided_by)]
    decided = runs if kind == "aa" else rolled_back
    return {
        "runs": len(runs),
        "rollbacks": len(rolled_back),
        "rollback_rate": len(rolled_back) / len(runs) if runs else None,
        "rollback_rate_upper95": wilson_upper(len(rolled_back), len(runs)) if runs else None,
        "timed_out": sum(r.timed_out for r in runs),
        "caught_by_expected_signal": len(caught) if kind != "aa" else None,
        "busy_core_runs": sum(r.busy_core for r in runs),
        "busy_core_rollbacks": sum(r.busy_core for r in rolled_back),
        "median_canary_requests_to_decide": _median([r.canary_requests for r in decided]),
        "median_seconds": _median([r.seconds for r in runs]),
        "median_gateway_ratio": _median(
            [
                r.gateway_median_ms["2"] / r.gateway_median_ms["1"]
                for r in runs
                if r.gateway_median_ms.get("1") and "2" in r.gateway_median_ms
            ]
        ),
        "signals": sorted({s for r in rolled_back for s in r.decided_by}),
        "unparsable_lines": sum(r.unparsable_lines for r in runs),
    }


def simulated(canary: CanaryConfig, runs: int) -> dict[str, dict[str, Any]]:
    """The simulated judge on the same profile and fault sizes, ``runs`` streams each."""
    traffic = Traffic(
        rps=RATE,
        check_interval_s=5.0,
        error_increase=ERROR_POINTS,
        latency_factor=LATENCY_FACTOR,
        accuracy_drop=ACCURACY_POINTS,
        label_fraction=1.0,  # the live traffic labels every answer
    )
    out: dict[str, dict[str, Any]] = {}
    for kind, fault in SIMULATED.items():
        decisions = [simulate(canary, fault, seed, traffic).judge for seed in range(runs)]
        rollbacks = [d for d in decisions if d.action is Action.ROLLBACK]
        decided = decisions if fault is Fault.NONE else rollbacks
        out[kind] = {
            "runs": runs,
            "rollback_rate": len(rollbacks) / runs if runs else None,
            "median_canary_requests_to_decide": _median([d.canary_requests for d in decided]),
        }
    return out


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def render(report: dict[str, Any]) -> str:
    """The report as a markdown table (live beside simulated)."""
    lines = [
        "# Live canary decision quality",
        "",
        f"Profile `{report['profile']}`, {report['rate']:g} requests/s, "
        f"{report['elapsed_s'] / 60:.0f} min on {os.cpu_count()} cores, "
        f"{report['runs_done']} of {report['runs_planned']} planned runs. "
        f"Latency fault: {report['latency_delay_ms']:.2f} ms added by the sidecar (half of "
        "stable's median through a 0 ms sidecar in the calibration rollouts).",
        "",
        "| scenario | live runs | rolled back (timed out) | caught by its signal | busy-core runs "
        "(rolled back) | live canary requests to decide | simulated rollback rate "
        "| simulated requests to decide | canary/stable median latency |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, row in report["live"].items():
        sim = report["simulated"].get(kind, {})
        caught = row["caught_by_expected_signal"]
        lines.append(
            f"| {report['labels'][kind]} | {row['runs']} | {row['rollbacks']} "
            f"({_pct(row['rollback_rate'])}; {row['timed_out']}) "
            f"| {'–' if caught is None else caught} "
            f"| {row['busy_core_runs']} ({row['busy_core_rollbacks']}) "
            f"| {_num(row['median_canary_requests_to_decide'])} "
            f"| {_pct(sim.get('rollback_rate'))} "
            f"| {_num(sim.get('median_canary_requests_to_decide'))} "
            f"| {_ratio(row['median_gateway_ratio'])} |"
        )
    unparsable = f"Unparsable gateway or server log lines seen: {report['unparsable_lines']}."
    return "\n".join([*lines, "", READING, unparsable, ""])


LABELS = {
    "aa": "A/A (identical retrained model)",
    "latency": "latency +50 % (sidecar delay)",
    "errors": "errors +2 points (sidecar 503s)",
    "accuracy": "accuracy −5 points, labelled traffic only",
}


def interleave(counts: dict[str, int]) -> list[tuple[str, int]]:
    """Every kind's runs spread evenly over the schedule (a run stopped early stays balanced)."""
    items = [(kind, index) for kind, count in counts.items() for index in range(count)]
    order = list(counts)
    return sorted(items, key=lambda it: ((it[1] + 0.5) / counts[it[0]], order.index(it[0])))


def write_report(out: Path, report: dict[str, Any]) -> None:
    """JSON and markdown, rewritten after every run (a stopped benchmark keeps its runs)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("json", json.dumps(report, indent=2) + "\n"), ("md", render(report))):
        partial = out / f"canary_live.{name}.tmp"
        partial.write_text(text)
        partial.replace(out / f"canary_live.{name}")


def _count(text: str) -> int:
    """A run count: an integer ≥ 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: a count must be ≥ 0")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the live benchmark; 0 when the targets hold, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / ".mlops" / "bench")
    counts = {"--aa-runs": 30, "--fault-runs": 10, "--sim-runs": 200}
    for flag, default in counts.items():
        parser.add_argument(flag, type=_count, default=default, help=f"default {default}")
    parser.add_argument(
        "--canary-config",
        type=Path,
        default=PROFILE,
        help="The canary profile, relative to the repository (default: the fast local one; "
        "configs/canary.yaml takes minutes per step).",
    )
    parser.add_argument(
        "--max-duration",
        type=float,
        default=600.0,
        help="Seconds before a rollout is rolled back as timed out (counted apart).",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
    started = time.monotonic()
    scratch = prepare(args.out / "canary-live", args.canary_config)
    scratch = dataclasses.replace(scratch, max_duration_s=args.max_duration)
    sim = simulated(scratch.canary, args.sim_runs)
    calibration = [
        live_run(
            scratch,
            "calibration",
            index,
            _traffic(scenario=Scenario.SLOW_CANARY, slow_ms=0.0),
            stable_sidecar=True,
        )
        for index in range(args.fault_runs and CALIBRATION_RUNS)
    ]
    stable_medians = [r.gateway_median_ms["1"] for r in calibration if "1" in r.gateway_median_ms]
    delay_ms = (LATENCY_FACTOR - 1) * (_median(stable_medians) or 5.0)
    wrong_rate = min(1.0, ACCURACY_POINTS / scratch.accuracy)
    plans = {
        "aa": (_traffic(), {}),
        "latency": (
            _traffic(scenario=Scenario.SLOW_CANARY, slow_ms=delay_ms),
            {"delay_ms": round(delay_ms, 3)},
        ),
        "errors": (
            _traffic(scenario=Scenario.FAILING_CANARY, failing_rate=ERROR_POINTS),
            {"error_rate": ERROR_POINTS},
        ),
        "accuracy": (
            _traffic(wrong_label_version="2", wrong_label_rate=wrong_rate),
            {"wrong_label_rate": round(wrong_rate, 4), "holdout_accuracy": scratch.accuracy},
        ),
    }
    counts = {"aa": args.aa_runs, "latency": args.fault_runs}
    counts.update(errors=args.fault_runs, accuracy=args.fault_runs)
    schedule = interleave(counts)
    runs: dict[str, list[Run]] = {kind: [] for kind in plans}
    report: dict[str, Any] = {}
    for done, (kind, index) in enumerate(schedule, start=1):
        traffic, fault = plans[kind]
        runs[kind].append(
            live_run(
                scratch,
                kind,
                index,
                traffic,
                busy_core=kind == "aa" and index % 2 == 1,
                fault=fault,
                stable_sidecar=kind in ("latency", "errors"),
            )
        )
        report = {
            "profile": str(args.canary_config),
            "rate": RATE,
            "elapsed_s": round(time.monotonic() - started, 1),
            "runs_done": done,
            "runs_planned": len(schedule),
            "latency_delay_ms": delay_ms,
            "calibration": [asdict(r) for r in calibration],
            "labels": LABELS,
            "live": {kind: summarize(kind, items) for kind, items in runs.items() if items},
            "simulated": sim,
            "runs": [asdict(r) for items in runs.values() for r in items],
        }
        report["unparsable_lines"] = sum(r["unparsable_lines"] for r in report["live"].values())
        write_report(args.out, report)
    sys.stdout.write(render(report) if report else "no runs\n")
    live = report.get("live", {})
    aa = live.get("aa", {}).get("rollback_rate") or 0.0
    caught = [
        row["caught_by_expected_signal"] / row["runs"]
        for kind, row in live.items()
        if kind != "aa" and row["runs"]
    ]
    return 0 if aa <= 0.02 and all(c >= 0.95 for c in caught) else 1


if __name__ == "__main__":
    sys.exit(main())
