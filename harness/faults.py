"""Fault injection: a sidecar in front of one version's server that makes it slow or failing.

``POST /predict`` is delayed by ``--delay-ms`` and answered ``503`` for an ``--error-rate``
fraction; everything else (health checks, labels) passes untouched, so the gateway keeps the
version in rotation and the canary analysis sees the fault. ``mlops traffic`` scenarios
``slow_canary`` and ``failing_canary`` start it through
:func:`pipelines.environments.local.reconcile.set_fault`; ``bentos/`` is not changed for them.

It exports what a mesh proxy exports (the request metrics of istio or linkerd that Flagger
and Argo Rollouts read): per request on the paths it fronts, a counter by status class and
traffic kind and a latency histogram timed here, delay and injected errors included, for the
version it fronts, on its own ``/metrics``
(:data:`pipelines.telemetry.PROXY_METRICS`). The judge's Prometheus source takes that
version's requests, errors and latency from these series: the server's own counters never see
an injected delay or error.

Run as ``python -m harness.faults --port P --upstream URL ...``; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import time
from collections.abc import Sequence

import httpx
import orjson
import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from pipelines import telemetry
from pipelines.environments.local.sidecar import Proxy, relay, serve
from pipelines.serving.exporter import status_class, traffic_of

log = logging.getLogger(__name__)

# How long the sidecar waits at start for the server's /metrics to name its version.
DISCOVER_TIMEOUT_S = 20.0


class ProxyMetrics:
    """The proxy's request series for the one version it fronts, in a registry of its own.

    Args:
        model_name: The fronted server's model.
        model_version: Its version.
        registry: Where the families live [a new registry].
    """

    def __init__(
        self,
        model_name: str,
        model_version: str,
        registry: prometheus_client.CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry or prometheus_client.CollectorRegistry()
        requests = prometheus_client.Counter(
            telemetry.PROXY_REQUESTS.name.removesuffix("_total"),
            telemetry.PROXY_REQUESTS.help,
            labelnames=list(telemetry.PROXY_REQUESTS.labels),
            registry=self.registry,
        )
        latency = prometheus_client.Histogram(
            telemetry.PROXY_LATENCY.name,
            telemetry.PROXY_LATENCY.help,
            labelnames=list(telemetry.PROXY_LATENCY.labels),
            buckets=list(telemetry.LATENCY_BUCKETS_S),
            registry=self.registry,
        )
        model = {"model_name": model_name, "model_version": model_version}
        # Bound at start, as the server's: every series exists (at 0) before the first request.
        self._requests = {
            (traffic, status): requests.labels(**model, traffic=traffic, status=status)
            for traffic in telemetry.TRAFFIC_VALUES
            for status in telemetry.STATUS_CLASSES
        }
        self._latency = {
            traffic: latency.labels(**model, traffic=traffic)
            for traffic in telemetry.TRAFFIC_VALUES
        }

    def request(self, traffic: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency at the proxy."""
        self._requests[(traffic, status_class(status))].inc()
        self._latency[traffic].observe(seconds)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return prometheus_client.generate_latest(self.registry)


def fronted_version(metrics_text: str) -> tuple[str, str] | None:
    """The ``(model_name, model_version)`` a server's ``/metrics`` counts requests for."""
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == telemetry.REQUESTS.name:
                name = sample.labels.get("model_name")
                version = sample.labels.get("model_version")
                if name and version:
                    return name, version
    return None


def discover_version(upstream: str, timeout_s: float = DISCOVER_TIMEOUT_S) -> tuple[str, str]:
    """Ask the fronted server's ``/metrics`` which model version it serves.

    Raises:
        RuntimeError: No answer naming a version within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    problem = "no answer"
    while True:
        try:
            answer = httpx.get(f"{upstream.rstrip('/')}/metrics", timeout=5.0)
            found = fronted_version(answer.text) if answer.status_code == 200 else None
            if found is not None:
                return found
            problem = f"HTTP {answer.status_code}, no {telemetry.REQUESTS.name} series"
        except httpx.HTTPError as exc:
            problem = str(exc)
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"{upstream}/metrics does not name the model version it serves ({problem})"
            )
        time.sleep(0.5)


def fault_app(
    upstream: str,
    delay_ms: float,
    error_rate: float,
    paths: Sequence[str],
    metrics: ProxyMetrics,
):
    """The fault injector as an ASGI app; ``GET /metrics`` answers its own series."""
    from starlette.requests import Request
    from starlette.responses import Response

    proxy = Proxy(upstream)
    faulty = frozenset(paths)
    rng = random.Random()

    async def answer(request: Request, body: bytes) -> Response:
        if request.method == "POST" and request.url.path in faulty:
            if delay_ms > 0:
                await asyncio.sleep(delay_ms / 1000.0)
            if rng.random() < error_rate:
                return Response(
                    orjson.dumps({"error": "injected fault"}),
                    status_code=503,
                    media_type="application/json",
                    headers={"x-injected-fault": "1"},
                )
        try:
            return relay(await proxy.pass_on(request, body))
        except httpx.HTTPError:
            return Response(b"upstream unreachable", status_code=502)

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await proxy.client.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        request = Request(scope, receive)
        if request.method == "GET" and request.url.path == "/metrics":
            exposition = Response(
                metrics.exposition(), media_type=prometheus_client.CONTENT_TYPE_LATEST
            )
            await exposition(scope, receive, send)
            return
        started = time.perf_counter()
        response = await answer(request, await request.body())
        await response(scope, receive, send)
        if request.url.path in faulty:
            traffic = traffic_of(scope.get("headers", ()))
            metrics.request(traffic, response.status_code, time.perf_counter() - started)

    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Run the fault injector until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m harness.faults")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--path", action="append", default=None)
    parser.add_argument("--tag", default="", help="Makes the command line unique.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    model_name, model_version = discover_version(args.upstream)
    log.info("fronting %s version %s at %s", model_name, model_version, args.upstream)
    metrics = ProxyMetrics(model_name, model_version)
    app = fault_app(
        args.upstream, args.delay_ms, args.error_rate, args.path or ["/predict"], metrics
    )
    serve(app, args.port)


if __name__ == "__main__":
    main()
