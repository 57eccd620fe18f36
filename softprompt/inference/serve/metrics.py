"""Prometheus metrics for ``GET /metrics``, one :class:`CollectorRegistry` per app.

A registry per app (not prometheus_client's global one) lets several servers live in one
process, as tests do, without clashing names. Names follow Prometheus conventions with a
``softprompt_`` prefix and mirror vLLM's where one exists (``vllm:num_requests_running`` ->
``softprompt_num_requests_running``). Counters and histograms are updated as requests pass;
gauges and the adapter cache counters are read from the engine and registry at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.routing import BaseRoute, Match

from softprompt.inference.engine import Engine
from softprompt.inference.serve.drain import Drain

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, engine: Engine, drain: Drain) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "softprompt_http_requests",
            "HTTP requests answered, by route template and status code",
            ["route", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "softprompt_prompt_tokens", "Prompt tokens prefilled (virtual tokens not counted)", registry=r
        )
        self.generation_tokens = Counter("softprompt_generation_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram(
            "softprompt_time_to_first_token_seconds",
            "From a sequence's submission to its first generated token",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "softprompt_e2e_request_latency_seconds",
            "From a sequence's submission to its end (finished ones)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        r.register(_EngineCollector(engine, drain))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # The worker reports each sequence through these two calls (see EngineWorker.stream).
    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def sequence_done(self, prompt_tokens: int, generated: int, seconds: float | None) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(generated)
        if seconds is not None:
            self.latency.observe(seconds)


class _EngineCollector:
    """Read at scrape time from the engine thread's structures (lengths and ints only, safe to read)."""

    def __init__(self, engine: Engine, drain: Drain) -> None:
        self.engine, self.drain = engine, drain

    def collect(self) -> Iterator[Metric]:
        scheduler, registry = self.engine.scheduler, self.engine.registry
        stats = registry.stats
        yield GaugeMetricFamily(
            "softprompt_num_requests_running", "Sequences in the running batch", value=len(scheduler.running)
        )
        yield GaugeMetricFamily(
            "softprompt_num_requests_waiting", "Sequences queued for admission", value=len(scheduler.waiting)
        )
        yield GaugeMetricFamily(
            "softprompt_http_requests_in_flight",
            "HTTP requests being answered (streams too)",
            value=self.drain.in_flight,
        )
        yield GaugeMetricFamily(
            "softprompt_draining", "1 after a stop signal, while the server drains", value=int(self.drain.draining)
        )
        yield GaugeMetricFamily("softprompt_adapters", "Adapters the server lists", value=len(registry.names()))
        yield GaugeMetricFamily(
            "softprompt_adapters_loaded",
            "Adapters held in memory (embedding + prompt KV)",
            value=len(registry.loaded_names()),
        )
        yield CounterMetricFamily("softprompt_adapter_cache_hits", "Prompt KV served from memory", value=stats.hits)
        yield CounterMetricFamily(
            "softprompt_adapter_cache_misses", "Prompt KV computed (first use, or after eviction)", value=stats.misses
        )
        yield CounterMetricFamily("softprompt_adapter_loads", "Adapter files read from disk", value=stats.loads)
        yield CounterMetricFamily(
            "softprompt_adapter_evictions", "Adapters dropped from memory by the byte bound", value=stats.evictions
        )


class RequestMetrics:
    """ASGI middleware: counts every answered request by route template (not raw path) and status."""

    def __init__(self, app: Any, metrics: Metrics, routes: list[BaseRoute]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # No answer and no error: the client left first (nginx's 499). An error: the outer error
        # middleware answers 500.
        status = 499

        async def watch(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            status = 500
            raise
        finally:
            self.metrics.requests.labels(route=self._route(scope), status=str(status)).inc()

    def _route(self, scope: dict[str, Any]) -> str:
        """The template (``/v1/adapters/{name}``) keeps label values few, whatever paths clients send.

        The router records the route it matched in the scope; requests answered before routing
        (401, 413, 503) are matched here against the API's routes.
        """
        matched = scope.get("route")
        if matched is None:
            matched = next((r for r in self.routes if r.matches(scope)[0] is not Match.NONE), None)
        return str(getattr(matched, "path", "unmatched"))
