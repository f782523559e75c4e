"""Serving benchmark: the same model served three ways, loaded with the same wrk requests.

(a) our Bento under ``bentoml serve`` (as packaged by ``mlops package``; also run with the
prediction log off, to price it), (b) ``mlflow models serve --env-manager local``, (c) a bare
FastAPI + uvicorn route (``benchmarks/serving_fastapi_app.py``). One after another, each
server pinned to CPU 0 and wrk to CPU 1, single-row JSON bodies at each concurrency.
Writes ``serving.json`` and ``serving.md`` under ``.mlops/benchmarks/``.

Usage: ``.venv/bin/python benchmarks/serving.py [--duration 15] [--concurrency 1 8 32]``
(needs ``mlops train && mlops validate && mlops package --alias challenger`` first).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
log = logging.getLogger("benchmarks.serving")

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("%(body)s", "rb")
wrk.body = f:read("*a")
f:close()
done = function(summary, latency, requests)
  io.write(string.format(
    'RESULT {"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,' ..
    '"status":%%d,"timeout":%%d,"p50_us":%%d,"p99_us":%%d}\\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read,
    summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def ensure_wrk() -> str:
    """The wrk binary; installed from Debian when missing (root only), else a clear failure."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log.info("installing wrk from Debian")
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False)
        found = shutil.which("wrk")
    if not found:
        sys.exit("error: wrk is not installed; run `sudo apt-get install -y wrk` and retry")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its children, in MiB."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total / 2**20


def wait_ready(url: str, process: subprocess.Popen, body: bytes, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            response = httpx.post(
                url, content=body, headers={"content-type": "application/json"}, timeout=5
            )
            if response.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server at {url} not ready after {timeout}s")


def run_wrk(wrk: str, script: Path, url: str, connections: int, duration: float) -> dict:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            wrk,
            "-t1",
            f"-c{connections}",
            f"-d{round(duration)}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    raw = json.loads(line[len("RESULT ") :])
    errors = sum(raw[k] for k in ("connect", "read", "write", "status", "timeout"))
    return {
        "concurrency": connections,
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "errors": errors,
        "requests": raw["requests"],
    }


def bench_server(
    name: str,
    command: list[str],
    env: dict[str, str],
    url: str,
    body: bytes,
    args: argparse.Namespace,
    wrk: str,
    workdir: Path,
) -> dict:
    """Start one server on CPU 0, measure idle RSS, warm up, then load it at each level."""
    log.info("%s: starting", name)
    body_file = workdir / f"{name}.json"
    body_file.write_bytes(body)
    script = workdir / f"{name}.lua"
    script.write_text(WRK_SCRIPT % {"body": body_file})
    server_log = (workdir / f"{name}.log").open("w")
    process = subprocess.Popen(
        ["taskset", "-c", "0", *command],
        # mlflow serve execs `uvicorn` from PATH: the venv's, as for the others.
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **env},
        stdout=server_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=workdir,
    )
    try:
        try:
            wait_ready(url, process, body)
        except RuntimeError:
            server_log.flush()
            log.error("%s log:\n%s", name, (workdir / f"{name}.log").read_text()[-3000:])
            raise
        time.sleep(2)
        idle = tree_rss_mb(process.pid)
        run_wrk(wrk, script, url, 8, args.warmup)
        levels = []
        for connections in args.concurrency:
            result = run_wrk(wrk, script, url, connections, args.duration)
            log.info(
                "%s c%d: %.0f rps, p99 %.1f ms, errors %d",
                name,
                connections,
                result["rps"],
                result["p99_ms"],
                result["errors"],
            )
            levels.append(result)
        return {"server": name, "idle_rss_mb": idle, "levels": levels}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
        server_log.close()


def markdown(report: dict) -> str:
    lines = [
        "# Serving benchmark",
        "",
        f"Model {report['model']}; server on CPU 0, wrk on CPU 1; {report['duration_s']} s per "
        f"level; load average before the run {report['loadavg']}.",
        "",
        "| server | conc. | RPS | p50 ms | p99 ms | errors | idle RSS MiB | x mlflow | x fastapi |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = {r["server"]: {lv["concurrency"]: lv for lv in r["levels"]} for r in report["runs"]}
    for run in report["runs"]:
        for lv in run["levels"]:
            c = lv["concurrency"]
            ratios = [
                f"{lv['rps'] / base[b][c]['rps']:.2f}" if b in base and base[b][c]["rps"] else "-"
                for b in ("mlflow", "fastapi")
            ]
            lines.append(
                f"| {run['server']} | {c} | {lv['rps']:.0f} | {lv['p50_ms']:.1f} | "
                f"{lv['p99_ms']:.1f} | {lv['errors']} | {run['idle_rss_mb']:.0f} | "
                f"{ratios[0]} | {ratios[1]} |"
            )
    lines += [
        "",
        "Targets at the highest concurrency: "
        + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in report["targets"].items()),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package-result", type=Path, default=ROOT / ".mlops/results/package.json")
    parser.add_argument("--duration", type=float, default=15)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--output-dir", type=Path, default=ROOT / ".mlops/benchmarks")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    os.environ["BENTOML_DO_NOT_TRACK"] = "true"
    wrk = ensure_wrk()
    if not args.package_result.is_file():
        sys.exit(f"error: {args.package_result} not found; run `mlops package --alias challenger`")
    package = json.loads(args.package_result.read_text())
    state = args.package_result.parent.parent
    uri = f"models:/{package['model_name']}/{package['model_version']}"
    tracking = f"sqlite:///{state / 'mlflow' / 'mlflow.db'}"

    sys.path.insert(0, str(ROOT))
    from pipelines.config.loader import load_config_set
    from pipelines.data import load_dataset

    config = load_config_set(ROOT / "configs")
    row = load_dataset(config.data, config.root).X.iloc[0].to_dict()
    records = json.dumps({"records": [row]}).encode()
    dataframe = json.dumps({"dataframe_records": [row]}).encode()
    loadavg = ", ".join(f"{x:.2f}" for x in os.getloadavg())

    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = Path(tmp)
        bento_env = {
            "BENTOML_HOME": str(state / "bentoml"),
            "MLOPS_PREDICTION_LOG": str(work / "predictions.jsonl"),
            "MLOPS_LABELS_LOG": str(work / "labels.jsonl"),
        }
        servers = [
            (
                "bento",
                [str(BIN / "bentoml"), "serve", package["bento_tag"], "--port", "{port}"],
                bento_env,
                records,
            ),
            (
                "bento-nolog",
                [str(BIN / "bentoml"), "serve", package["bento_tag"], "--port", "{port}"],
                {**bento_env, "MLOPS_PREDICTION_LOG": "off"},
                records,
            ),
            (
                "mlflow",
                [
                    str(BIN / "mlflow"),
                    "models",
                    "serve",
                    "-m",
                    uri,
                    "--env-manager",
                    "local",
                    "--workers",
                    "1",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    "{port}",
                ],
                {"MLFLOW_TRACKING_URI": tracking},
                dataframe,
            ),
            (
                "fastapi",
                [
                    str(BIN / "uvicorn"),
                    "serving_fastapi_app:app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "{port}",
                    "--no-access-log",
                    "--app-dir",
                    str(ROOT / "benchmarks"),
                ],
                {"MLFLOW_TRACKING_URI": tracking, "BENCH_MODEL_URI": uri},
                records,
            ),
        ]
        for name, command, env, body in servers:
            port = free_port()
            url = f"http://127.0.0.1:{port}" + ("/invocations" if name == "mlflow" else "/predict")
            command = [part.replace("{port}", str(port)) for part in command]
            runs.append(bench_server(name, command, env, url, body, args, wrk, work))

    top = max(args.concurrency)
    at = {r["server"]: next(lv for lv in r["levels"] if lv["concurrency"] == top) for r in runs}
    bento = at["bento"]
    report = {
        "model": uri,
        "bento_tag": package["bento_tag"],
        "duration_s": args.duration,
        "loadavg": loadavg,
        "runs": runs,
        "targets": {
            f"bento >= 4x mlflow at c{top}": bento["rps"] >= 4 * at["mlflow"]["rps"],
            f"bento >= 1.1x fastapi at c{top}": bento["rps"] >= 1.1 * at["fastapi"]["rps"],
            "bento p99 <= 250 ms": bento["p99_ms"] <= 250,
            "bento no errors": all(lv["errors"] == 0 for lv in runs[0]["levels"]),
            "prediction log costs < 10% RPS": bento["rps"] >= 0.9 * at["bento-nolog"]["rps"],
        },
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "serving.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.output_dir / "serving.md").write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
