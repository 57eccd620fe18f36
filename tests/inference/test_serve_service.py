"""The service (serve/service.py): a failed sequence's request gets the status its cause deserves."""

from __future__ import annotations

import threading
import time

import httpx

from softprompt.inference.serve import ServeConfig
from tests.conftest import load_tiny
from tests.inference.serving import MODEL, long_prompt, openai_error, running, slowed, tiny_engine
from tests.inference.test_engine_registry import save_prompts


def test_adapter_unloaded_while_a_request_waits_is_404_not_500(tiny_dirs, tmp_path):
    """A queued request whose adapter is unloaded before its prefill: 404 model_not_found, stream or not."""
    base = load_tiny(tiny_dirs, "llama")
    save_prompts(base, tmp_path, ["alpha", "gamma"], tokens=3)
    engine = slowed(tiny_engine(base, tmp_path, max_batch_size=1), 0.02)  # one running row: the others wait
    config = ServeConfig(served_model_name=MODEL, enable_adapter_admin=True, max_tokens=64, default_max_tokens=8)
    with running(engine, config) as (url, _), httpx.Client(base_url=url, timeout=30) as http:
        hog = {"model": MODEL, "prompt": long_prompt(base, 40), "max_tokens": 40, "stream": True, "temperature": 0}
        with http.stream("POST", "/v1/completions", json=hog) as response:
            lines = response.iter_lines()  # kept: dropping the iterator would close the connection
            next(lines)  # the hog holds the only batch row
            waiting: dict = {}
            thread = threading.Thread(
                target=lambda: waiting.update(r=http.post("/v1/completions", json={"model": "gamma", "prompt": "x"}))
            )
            thread.start()
            for _ in range(100):
                if len(engine.scheduler.waiting) == 1:
                    break
                time.sleep(0.01)
            assert len(engine.scheduler.waiting) == 1 and len(engine.scheduler.running) == 1
            assert http.delete("/v1/adapters/gamma").status_code == 200
            thread.join(30)
    assert openai_error(waiting["r"], 404)["code"] == "model_not_found"
