"""GET /metrics: Prometheus text that prometheus_client's own parser reads, moving with traffic."""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from softprompt.inference.engine import AdapterRegistry, Engine, EngineConfig, RegistryConfig
from softprompt.inference.serve import ServeConfig
from tests.conftest import load_tiny
from tests.inference.serving import Throttle, llama_with_adapters, running


@pytest.fixture(scope="module")
def server(tiny_dirs, tmp_path_factory):
    base, adapters = llama_with_adapters(tiny_dirs, tmp_path_factory.mktemp("metrics-adapters"), ["alpha", "beta"], 3)
    probe = AdapterRegistry(base, adapters)
    probe.scan()
    one = max(e.nbytes for e in probe._entries.values())
    # Room for about one adapter with its prompt KV, so alternating adapters evicts and reloads.
    registry = AdapterRegistry(base, adapters, RegistryConfig(max_loaded_bytes=3 * one))
    registry.scan()
    engine = Engine(base, registry, EngineConfig(max_batch_size=8))
    slow = Throttle(engine)
    with running(engine, ServeConfig(served_model_name="tiny", max_tokens=64, default_max_tokens=4)) as (url, _):
        with httpx.Client(base_url=url, timeout=30) as client:
            client.slow = slow  # type: ignore[attr-defined]
            yield client


def scrape(client) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value}, parsed by prometheus_client."""
    text = client.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_parse_and_move_with_traffic(server):
    before = scrape(server)
    usage = {"prompt_tokens": 0, "completion_tokens": 0}
    for model in ("alpha", "beta", "alpha", "tiny"):
        body = server.post("/v1/completions", json={"model": model, "prompt": "metrics", "max_tokens": 4}).json()
        for key in usage:
            usage[key] += body["usage"][key]
    assert server.post("/v1/completions", json={"model": "nope", "prompt": "x"}).status_code == 404
    server.delete("/v1/adapters/some-name")  # admin is off: 403, counted under the route template
    server.get("/no/such/path")
    after = scrape(server)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("softprompt_http_requests_total", route="/v1/completions", status="200") == 4
    assert moved("softprompt_http_requests_total", route="/v1/completions", status="404") == 1
    assert moved("softprompt_http_requests_total", route="/v1/adapters/{name}", status="403") == 1
    assert moved("softprompt_http_requests_total", route="unmatched", status="404") == 1
    assert moved("softprompt_prompt_tokens_total") == usage["prompt_tokens"]
    assert moved("softprompt_generation_tokens_total") == usage["completion_tokens"]
    assert moved("softprompt_time_to_first_token_seconds_count") == 4
    assert moved("softprompt_e2e_request_latency_seconds_count") == 4
    assert moved("softprompt_e2e_request_latency_seconds_sum") > 0
    # alpha, beta, alpha with room for one: each switch evicts, reloads from disk and recomputes prompt KV.
    assert moved("softprompt_adapter_cache_misses_total") >= 2 and moved("softprompt_adapter_evictions_total") >= 1
    assert moved("softprompt_adapter_loads_total") >= 1
    assert value(after, "softprompt_adapters") == 2 and value(after, "softprompt_draining") == 0


def test_cache_hits_count_when_the_adapter_stays_loaded(server):
    before = scrape(server)
    for _ in range(3):
        server.post("/v1/completions", json={"model": "beta", "prompt": "again", "max_tokens": 2})
    assert (
        value(scrape(server), "softprompt_adapter_cache_hits_total")
        - value(before, "softprompt_adapter_cache_hits_total")
        >= 2
    )


def test_running_and_in_flight_gauges_follow_an_open_stream(server, tiny_dirs):
    server.slow.delay = 0.05
    try:
        body = {"model": "alpha", "prompt": "long", "max_tokens": 60, "stream": True, "temperature": 0}
        with server.stream("POST", "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            next(lines)
            during = scrape(server)
    finally:
        server.slow.delay = 0.0
    assert value(during, "softprompt_num_requests_running") == 1
    assert value(during, "softprompt_http_requests_in_flight") >= 2  # the stream and this scrape
    for _ in range(40):
        idle = scrape(server)
        if value(idle, "softprompt_num_requests_running") == 0:
            break
        time.sleep(0.05)
    assert value(idle, "softprompt_num_requests_running") == 0 and value(idle, "softprompt_num_requests_waiting") == 0


def test_each_app_has_its_own_registry(tiny_dirs):
    base = load_tiny(tiny_dirs, "llama")
    config = ServeConfig(served_model_name="tiny", default_max_tokens=2)
    with running(Engine(base), config) as (first, _), running(Engine(base), config) as (second, _):
        httpx.post(first + "/v1/completions", json={"model": "tiny", "prompt": "x"})
        one, two = (scrape(httpx.Client(base_url=u)) for u in (first, second))
    assert value(one, "softprompt_http_requests_total", route="/v1/completions", status="200") == 1
    assert value(two, "softprompt_http_requests_total", route="/v1/completions", status="200") == 0
