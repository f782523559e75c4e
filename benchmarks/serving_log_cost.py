"""What the prediction log costs the Bento, split into its parts, on one core.

Three copies of the packaged Bento run at the same time on CPU 0:

* ``off``: the prediction log off (``MLOPS_PREDICTION_LOG=off``);
* ``queued``: every request's record is queued on the request path as usual, and the writer
  thread drops what it finds at each flush without serialising or writing it
  (``MLOPS_PREDICTION_LOG_WRITE=off``): the request path's part alone;
* ``on``: the log as deployed.

Two ways to load them (``--mode``):

* ``alternate`` (the default): each round loads one copy at a time, alone on the core (the
  other two sit idle), in the order off, queued, on and then on, queued, off in the next
  round, so a drift of the machine's speed during a round pair cancels. The figure is each
  copy's RPS over the ``off`` copy's in the same round: what the log costs a server that has
  the core to itself, at every concurrency;
* ``side-by-side``: each round loads each pair of copies at once, one ``wrk`` per server on
  CPU 1, so the machine's noise hits both servers of a pair alike. At c1 the other copy's
  work on the same core is in each request's latency, which dilutes a part's cost (a lower
  bound); at c32 two saturated servers share the core unevenly from round to round.

Around every load the worker's per-thread CPU and context switches are read from
``/proc/<pid>/task/*/{stat,status}`` (the request thread is the worker's main thread; the
log's writer is one of the others), so the writer thread's CPU per request and the request
thread's switches per request come out beside the RPS ratios. (``perf stat``'s hardware
counters, cycles and cache misses, are not exposed on this machine's VM.)

Reports the median [min-max] over ``--rounds`` of each ratio at each concurrency, and
writes ``serving_log_cost.json`` and ``serving_log_cost.md`` under ``.mlops/benchmarks/``.

Usage: ``.venv/bin/python benchmarks/serving_log_cost.py [--mode alternate] [--rounds 8]
[--duration 10]`` (needs ``mlops package --alias challenger`` first, as
``benchmarks/serving.py``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
from serving import (
    ROOT,
    bento_server,
    ensure_wrk,
    example_row,
    free_port,
    load_package,
    parse_wrk,
    spread,
    start_server,
    stop_server,
    write_report,
    wrk_command,
    wrk_script,
)

log = logging.getLogger("benchmarks.serving_log_cost")

VARIANTS = {
    "off": {"MLOPS_PREDICTION_LOG": "off"},
    "queued": {"MLOPS_PREDICTION_LOG_WRITE": "off"},
    "on": {},
}
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def worker_pid(server: subprocess.Popen) -> int:
    """The busiest process under ``bentoml serve`` once it has served: its API worker."""
    children = psutil.Process(server.pid).children(recursive=True)
    return max(children, key=lambda p: sum(p.cpu_times()[:2])).pid


def thread_counters(pid: int) -> dict[str, float]:
    """The worker's per-thread counters: CPU seconds and the main thread's context switches.

    ``main_cpu`` is the request thread's, ``other_cpu`` every other thread's together;
    ``main_switches`` and ``main_preempted`` are the request thread's voluntary and
    involuntary context switches.
    """
    counters = {"main_cpu": 0.0, "other_cpu": 0.0, "main_switches": 0.0, "main_preempted": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            status = (task / "status").read_text() if task.name == str(pid) else ""
        except FileNotFoundError:  # a thread that ended since the listing
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) * TICK_S  # utime + stime
        counters["main_cpu" if task.name == str(pid) else "other_cpu"] += seconds
        for line in status.splitlines():
            key, _, value = line.partition(":")
            if key == "voluntary_ctxt_switches":
                counters["main_switches"] += int(value)
            elif key == "nonvoluntary_ctxt_switches":
                counters["main_preempted"] += int(value)
    return counters


COUNTERS = ("main_cpu", "other_cpu", "main_switches", "main_preempted")


def load(wrk: str, servers: dict, names: tuple[str, ...], connections: int, seconds: float):
    """Load the servers ``names`` at once, one wrk each; wrk's figures and counters per request.

    CPU per request is in µs.
    """
    before = {name: thread_counters(servers[name]["worker"]) for name in names}
    loads = {
        name: subprocess.Popen(
            wrk_command(wrk, servers[name]["script"], servers[name]["url"], connections, seconds),
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in names
    }
    outputs = {name: process.communicate()[0] for name, process in loads.items()}
    result = {}
    for name in names:
        after = thread_counters(servers[name]["worker"])
        figures = parse_wrk(outputs[name], connections)
        requests = max(figures["requests"], 1)
        result[name] = figures | {
            f"{key}_per_request": (1e6 if key.endswith("_cpu") else 1)
            * (after[key] - before[name][key])
            / requests
            for key in COUNTERS
        }
    return result


def rounds_of(mode: str, index: int) -> list[tuple[str, ...]]:
    """The loads of round ``index``, each a tuple of the copies loaded at once.

    Alternate: each copy alone, in an order that reverses every round. Side-by-side: each
    pair of copies.
    """
    if mode == "side-by-side":
        return list(itertools.combinations(VARIANTS, 2))
    order = list(VARIANTS) if index % 2 == 0 else list(reversed(VARIANTS))
    return [(name,) for name in order]


def cpu_per_request(figures: dict) -> float:
    """The worker's CPU per request, all its threads together."""
    return figures["main_cpu_per_request"] + figures["other_cpu_per_request"]


def summarize(rounds: list[dict], concurrency: list[int]) -> dict:
    """Per concurrency: ratios within a round and counters per request, median [min-max].

    The ratios are each pair's RPS and CPU per request in the same round.
    """
    summary: dict = {}
    for c in concurrency:
        at = [r for r in rounds if r["concurrency"] == c]
        ratios, cpu = {}, {}
        for first, second in itertools.combinations(VARIANTS, 2):
            key = f"{second}/{first}"
            both = [r["servers"] for r in at if {first, second} <= set(r["servers"])]
            ratios[key] = spread([s[second]["rps"] / s[first]["rps"] for s in both])
            cpu[key] = spread(
                [cpu_per_request(s[second]) / cpu_per_request(s[first]) for s in both]
            )
        per_request = {
            name: {
                key: spread(
                    [r["servers"][name][f"{key}_per_request"] for r in at if name in r["servers"]]
                )
                for key in COUNTERS
            }
            for name in VARIANTS
        }
        summary[c] = {"rps_ratio": ratios, "cpu_ratio": cpu, "per_request": per_request}
    return summary


def markdown(report: dict) -> str:
    def fmt(spread: dict[str, float], digits: int = 3) -> str:
        return (
            f"{spread['median']:.{digits}f} [{spread['min']:.{digits}f}-{spread['max']:.{digits}f}]"
        )

    how = (
        "each copy loaded alone in turn, the order reversed every round"
        if report["mode"] == "alternate"
        else "two loaded at once"
    )
    lines = [
        "# The prediction log's cost",
        "",
        f"Bento {report['bento_tag']}; three copies on CPU 0, {how} (wrk on CPU 1); "
        f"{report['rounds']} rounds of {report['duration_s']} s per load and concurrency; "
        f"exporter {report['exporter']}; load average before: {report['loadavg']}. "
        "Median [min-max] over the rounds.",
        "",
        "Ratios within a round: RPS, and the worker's CPU per request (all threads).",
        "",
        "| c | figure | queued/off | on/off | on/queued |",
        "|---|---|---|---|---|",
    ]
    for c, figures in report["summary"].items():
        for figure, label in (("rps_ratio", "RPS"), ("cpu_ratio", "CPU per request")):
            ratio = figures[figure]
            lines.append(
                f"| {c} | {label} | {fmt(ratio['queued/off'])} | {fmt(ratio['on/off'])} | "
                f"{fmt(ratio['on/queued'])} |"
            )
    lines += [
        "",
        "Worker counters per request (main: the request thread; other: every other thread, "
        "the log's writer among them; CPU in µs; switches: the request thread's voluntary and "
        "involuntary context switches):",
        "",
        "| c | variant | main CPU | other CPU | main switches | main preempted |",
        "|---|---|---|---|---|---|",
    ]
    for c, figures in report["summary"].items():
        for name, counters in figures["per_request"].items():
            lines.append(
                f"| {c} | {name} | {fmt(counters['main_cpu'], 1)} | "
                f"{fmt(counters['other_cpu'], 1)} | {fmt(counters['main_switches'], 3)} | "
                f"{fmt(counters['main_preempted'], 3)} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package-result", type=Path, default=ROOT / ".mlops/results/package.json")
    parser.add_argument("--mode", choices=("alternate", "side-by-side"), default="alternate")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument(
        "--exporter",
        choices=("on", "off"),
        default="on",
        help="the Prometheus exporter in all three copies (on: as deployed)",
    )
    parser.add_argument("--output-dir", type=Path, default=ROOT / ".mlops/benchmarks")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"
    wrk = ensure_wrk()
    package = load_package(args.package_result)
    state = args.package_result.parent.parent
    body = json.dumps({"records": [example_row()]}).encode()
    loadavg = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-log-cost-") as tmp:
        work = Path(tmp)
        servers: dict[str, dict] = {}
        try:
            for name, variant in VARIANTS.items():
                folder = work / name
                folder.mkdir()
                command, env = bento_server(package, state, folder)
                if args.exporter == "off":
                    env["MLOPS_EXPORTER"] = "off"
                port = free_port()
                url = f"http://127.0.0.1:{port}/predict"
                command = [part.replace("{port}", str(port)) for part in command]
                process = start_server(name, command, env | variant, url, body, folder)
                servers[name] = {"process": process, "url": url}
                servers[name]["script"] = wrk_script(name, body, folder)
                # Warm up alone; the worker is then the busiest process of the server.
                subprocess.run(
                    wrk_command(wrk, servers[name]["script"], url, 8, 3),
                    capture_output=True,
                    check=True,
                )
                servers[name]["worker"] = worker_pid(process)
            for index in range(args.rounds):
                for c in args.concurrency:
                    merged: dict[str, dict] = {}
                    for names in rounds_of(args.mode, index):
                        result = load(wrk, servers, names, c, args.duration)
                        log.info(
                            "round %d c%d: %s",
                            index + 1,
                            c,
                            ", ".join(f"{n} {r['rps']:.0f} rps" for n, r in result.items()),
                        )
                        if args.mode == "side-by-side":
                            rounds.append({"round": index, "concurrency": c, "servers": result})
                        merged |= result
                    if args.mode == "alternate":
                        rounds.append({"round": index, "concurrency": c, "servers": merged})
        finally:
            for server in servers.values():
                stop_server(server["process"])
    report = {
        "bento_tag": package["bento_tag"],
        "mode": args.mode,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "exporter": args.exporter,
        "loadavg": loadavg,
        "summary": summarize(rounds, args.concurrency),
        "raw": rounds,
    }
    write_report(args.output_dir, "serving_log_cost", report, markdown(report))


if __name__ == "__main__":
    main()
