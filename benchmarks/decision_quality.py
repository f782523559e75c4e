"""Decision quality of the canary judge against a Flagger-style fixed-threshold rule.

Simulates A/A rollouts (identical models) and rollouts with one injected fault each, runs the
judge of ``configs/canary.yaml`` and a Flagger-style rule on the SAME streams, and reports the
false-rollback rate, the detection rate and the canary requests needed to decide.

    .venv/bin/python benchmarks/decision_quality.py            # ~1-2 min on 2 cores
    .venv/bin/python benchmarks/decision_quality.py --aa 1000  # tighter A/A estimate

Writes ``.mlops/benchmarks/decision_quality.{json,md}`` and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from harness.simulation import (  # noqa: E402
    Fault,
    FlaggerRule,
    RolloutOutcome,
    Traffic,
    run_rollout,
    wilson_upper,
)
from pipelines.canary.judge import Action  # noqa: E402
from pipelines.config.canary import CanaryConfig, load_canary_config  # noqa: E402

EXPECTED_SIGNAL = {
    Fault.ERRORS: ("error_rate",),
    Fault.LATENCY: ("latency",),
    Fault.ACCURACY: ("quality.",),
    Fault.DRIFT: ("prediction_drift",),
}
FLAGGER_SIGNAL = {
    Fault.ERRORS: ("error_rate",),
    Fault.LATENCY: ("p99_latency",),
    Fault.ACCURACY: ("accuracy",),
    Fault.DRIFT: ("prediction_drift",),
}


def fault_label(fault: Fault, t: Traffic) -> str:
    """What the scenario injects, in words, at the sizes of ``t``."""
    return {
        Fault.NONE: "A/A (identical models)",
        Fault.ERRORS: f"error rate +{t.error_increase * 100:g} points "
        f"({t.error_rate:.1%} → {t.error_rate + t.error_increase:.1%})",
        Fault.LATENCY: f"latency +{(t.latency_factor - 1) * 100:.0f} %",
        Fault.ACCURACY: f"accuracy −{t.accuracy_drop * 100:g} points, same prediction distribution",
        Fault.DRIFT: f"prediction drift (logits ÷ {t.drift_temperature:g})",
    }[fault]


def _one(args: tuple[CanaryConfig, Fault, int, Traffic, bool]) -> RolloutOutcome:
    config, fault, seed, traffic, binned = args
    return run_rollout(config, fault, seed, traffic, binned=binned)


def scaled_traffic(scale: float) -> Traffic:
    """The default traffic with every fault ``scale`` times its nominal size."""
    base = Traffic()
    return replace(
        base,
        error_increase=base.error_increase * scale,
        latency_factor=1 + (base.latency_factor - 1) * scale,
        accuracy_drop=base.accuracy_drop * scale,
        drift_temperature=1 + (base.drift_temperature - 1) * scale,
    )


def _median(values: list[int]) -> float | None:
    return float(statistics.median(values)) if values else None


def _summarize(fault: Fault, outcomes: list[RolloutOutcome], rule: str) -> dict:
    decisions = [getattr(o, rule) for o in outcomes]
    rollbacks = [d for d in decisions if d.action is Action.ROLLBACK]
    expected = (EXPECTED_SIGNAL if rule == "judge" else FLAGGER_SIGNAL).get(fault, ())
    named = [d for d in rollbacks if any(s.startswith(expected) for s in d.signals)]
    decided = rollbacks if fault is not Fault.NONE else decisions
    return {
        "rollouts": len(decisions),
        "rollbacks": len(rollbacks),
        "rollback_rate": len(rollbacks) / len(decisions),
        "rollback_rate_upper95": wilson_upper(len(rollbacks), len(decisions)),
        "undecided": sum(d.action is Action.HOLD for d in decisions),
        "named_expected_signal": len(named) if fault is not Fault.NONE else None,
        "median_canary_requests_to_decide": _median([d.canary_requests for d in decided]),
        "p90_canary_requests_to_decide": (
            float(sorted(d.canary_requests for d in decided)[int(0.9 * (len(decided) - 1))])
            if decided
            else None
        ),
        "median_total_requests_to_decide": _median([d.total_requests for d in decided]),
        "median_seconds_to_decide": _median([int(d.seconds) for d in decided]),
        "signals": sorted({s for d in rollbacks for s in d.signals}),
    }


def _fmt_requests(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def render(report: dict) -> str:
    """The markdown table of a report."""
    lines = [
        "# Canary decision quality",
        "",
        f"Config `{report['config']}`, {report['aa_rollouts']} A/A rollouts and "
        f"{report['fault_rollouts']} per fault, seed {report['seed']}, "
        f"{report['elapsed_s']:.0f} s on {report['workers']} worker(s), "
        f"faults at {report['fault_scale']:g}× their nominal size"
        + (", windows binned as Prometheus gives them." if report.get("binned") else "."),
        "",
        "| scenario | rule | rollbacks | rate (95 % upper) | right signal | median canary "
        "requests to decide | p90 | median time to decide |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        for rule in ("judge", "flagger"):
            r = row[rule]
            named = "–" if r["named_expected_signal"] is None else f"{r['named_expected_signal']}"
            seconds = r["median_seconds_to_decide"]
            lines.append(
                f"| {row['label']} | {'sequential judge' if rule == 'judge' else 'Flagger-style'}"
                f" | {r['rollbacks']}/{r['rollouts']} | {r['rollback_rate']:.1%} "
                f"({r['rollback_rate_upper95']:.1%}) | {named} "
                f"| {_fmt_requests(r['median_canary_requests_to_decide'])} "
                f"| {_fmt_requests(r['p90_canary_requests_to_decide'])} "
                f"| {'–' if seconds is None else f'{seconds / 60:.0f} min'} |"
            )
    lines += [
        "",
        "A/A: a rollback is a false rollback and requests-to-decide are those to promotion. "
        "Faults: the rate is the detection rate and requests-to-decide count until rollback.",
        "",
        f"Traffic: {report['traffic']}",
        "",
        f"Flagger-style rule: {report['flagger']}",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "configs" / "canary.yaml")
    parser.add_argument("--aa", type=int, default=400, help="A/A rollouts (≥ 200)")
    parser.add_argument("--per-fault", type=int, default=200, help="rollouts per fault")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--fault-scale",
        type=float,
        default=1.0,
        help="multiply every fault's size (0.5 = half-size faults, to see the limits)",
    )
    parser.add_argument(
        "--binned",
        action="store_true",
        help="judge each window as Prometheus gives it (bucketed latencies and scores)",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / ".mlops" / "benchmarks")
    args = parser.parse_args(argv)

    config = load_canary_config(args.config)
    traffic = scaled_traffic(args.fault_scale)
    plan = {Fault.NONE: args.aa, **{f: args.per_fault for f in Fault if f is not Fault.NONE}}
    jobs = [
        (
            config,
            fault,
            args.seed * 1_000_003 + index * 7919 + list(Fault).index(fault),
            traffic,
            args.binned,
        )
        for fault, count in plan.items()
        for index in range(count)
    ]
    started = time.perf_counter()
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers) as pool:
            outcomes = list(pool.map(_one, jobs, chunksize=8))
    else:
        outcomes = [_one(job) for job in jobs]
    elapsed = time.perf_counter() - started

    results = []
    for fault in plan:
        mine = [o for o in outcomes if o.fault is fault]
        results.append(
            {
                "fault": fault.value,
                "label": fault_label(fault, traffic),
                "judge": _summarize(fault, mine, "judge"),
                "flagger": _summarize(fault, mine, "flagger"),
            }
        )
    report = {
        "config": str(
            args.config.relative_to(REPO_ROOT) if args.config.is_absolute() else args.config
        ),
        "seed": args.seed,
        "aa_rollouts": args.aa,
        "fault_rollouts": args.per_fault,
        "workers": args.workers,
        "elapsed_s": elapsed,
        "alpha": config.statistics.alpha,
        "sequential_signals": config.sequential_signals(),
        "fault_scale": args.fault_scale,
        "binned": args.binned,
        "traffic": asdict(traffic),
        "flagger": asdict(FlaggerRule()),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = (
        "decision_quality" if args.fault_scale == 1.0 else f"decision_quality_x{args.fault_scale:g}"
    ) + ("_binned" if args.binned else "")
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render(report)
    (args.out / f"{stem}.md").write_text(markdown)
    print(markdown)
    if args.fault_scale != 1.0:
        return 0  # the targets are defined for the nominal fault sizes
    aa = results[0]["judge"]["rollback_rate"]
    detection = min(r["judge"]["rollback_rate"] for r in results[1:])
    ok = aa <= 0.02 and detection >= 0.99
    print(f"targets (false rollback ≤ 2 %, detection ≥ 99 %): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
