"""What the prediction log costs the Bento, split into its parts, side by side on one core.

Three copies of the packaged Bento run at the same time on CPU 0:

* ``off``: the prediction log off (``MLOPS_PREDICTION_LOG=off``);
* ``queued``: every request's record is queued on the request path as usual, and the writer
  thread drops what it finds at each flush without serialising or writing it
  (``MLOPS_PREDICTION_LOG_WRITE=off``): the request path's part alone;
* ``on``: the log as deployed.

Each round loads each pair of them at once, one ``wrk`` per server on CPU 1, so the machine's
noise hits both servers of a pair alike and the RPS ratio within a pair is the figure: with
the core saturated, a server's RPS is the inverse of its CPU per request. Around every load
the worker's per-thread CPU is read from ``/proc/<pid>/task/*/stat`` (the request thread is
the worker's main thread; the log's writer is one of the others), so the writer thread's CPU
per request comes out beside the RPS ratios.

Reports the median [min-max] over ``--rounds`` of each ratio at each concurrency, and
writes ``serving_log_cost.json`` and ``serving_log_cost.md`` under ``.mlops/benchmarks/``.

Usage: ``.venv/bin/python benchmarks/serving_log_cost.py [--rounds 6] [--duration 8]``
(needs ``mlops package --alias challenger`` first, as ``benchmarks/serving.py``).
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


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the worker's main thread and of all its other threads together."""
    cpu = {"main": 0.0, "other": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # a thread that ended since the listing
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) * TICK_S  # utime + stime
        cpu["main" if task.name == str(pid) else "other"] += seconds
    return cpu


def load_pair(wrk: str, servers: dict, pair: tuple[str, str], connections: int, seconds: float):
    """Load both servers of ``pair`` at once; each one's wrk figures and thread CPU."""
    before = {name: thread_cpu(servers[name]["worker"]) for name in pair}
    loads = {
        name: subprocess.Popen(
            wrk_command(wrk, servers[name]["script"], servers[name]["url"], connections, seconds),
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in pair
    }
    outputs = {name: process.communicate()[0] for name, process in loads.items()}
    result = {}
    for name in pair:
        after = thread_cpu(servers[name]["worker"])
        figures = parse_wrk(outputs[name], connections)
        requests = max(figures["requests"], 1)
        result[name] = figures | {
            f"{part}_cpu_us_per_request": 1e6 * (after[part] - before[name][part]) / requests
            for part in ("main", "other")
        }
    return result


def summarize(rounds: list[dict], concurrency: list[int]) -> dict:
    """Per concurrency: each pair's RPS ratio and each variant's CPU per request, spread."""
    summary: dict = {}
    for c in concurrency:
        at = [r for r in rounds if r["concurrency"] == c]
        ratios = {}
        for first, second in itertools.combinations(VARIANTS, 2):
            key = f"{second}/{first}"
            values = [
                r["servers"][second]["rps"] / r["servers"][first]["rps"]
                for r in at
                if set(r["servers"]) == {first, second}
            ]
            ratios[key] = spread(values)
        cpu = {
            name: {
                part: spread(
                    [
                        r["servers"][name][f"{part}_cpu_us_per_request"]
                        for r in at
                        if name in r["servers"]
                    ]
                )
                for part in ("main", "other")
            }
            for name in VARIANTS
        }
        summary[c] = {"rps_ratio": ratios, "cpu_us_per_request": cpu}
    return summary


def markdown(report: dict) -> str:
    def fmt(spread: dict[str, float], digits: int = 3) -> str:
        return (
            f"{spread['median']:.{digits}f} [{spread['min']:.{digits}f}-{spread['max']:.{digits}f}]"
        )

    lines = [
        "# The prediction log's cost, side by side",
        "",
        f"Bento {report['bento_tag']}; three copies on CPU 0, two loaded at once (wrk on CPU 1); "
        f"{report['rounds']} rounds of {report['duration_s']} s per pair and concurrency; "
        f"load average before: {report['loadavg']}. Median [min-max] over the rounds.",
        "",
        "| c | queued/off RPS | on/off RPS | on/queued RPS |",
        "|---|---|---|---|",
    ]
    for c, figures in report["summary"].items():
        ratio = figures["rps_ratio"]
        lines.append(
            f"| {c} | {fmt(ratio['queued/off'])} | {fmt(ratio['on/off'])} | "
            f"{fmt(ratio['on/queued'])} |"
        )
    lines += [
        "",
        "Worker CPU per request, µs (main: the request thread; other: every other thread, "
        "the log's writer among them):",
        "",
        "| c | variant | main | other |",
        "|---|---|---|---|",
    ]
    for c, figures in report["summary"].items():
        for name, cpu in figures["cpu_us_per_request"].items():
            lines.append(f"| {c} | {name} | {fmt(cpu['main'], 1)} | {fmt(cpu['other'], 1)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package-result", type=Path, default=ROOT / ".mlops/results/package.json")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=float, default=8)
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
                    for pair in itertools.combinations(VARIANTS, 2):
                        result = load_pair(wrk, servers, pair, c, args.duration)
                        rounds.append({"round": index, "concurrency": c, "servers": result})
                        log.info(
                            "round %d c%d: %s",
                            index + 1,
                            c,
                            ", ".join(f"{n} {r['rps']:.0f} rps" for n, r in result.items()),
                        )
        finally:
            for server in servers.values():
                stop_server(server["process"])
    report = {
        "bento_tag": package["bento_tag"],
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
