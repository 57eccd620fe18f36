"""The served app most server tests share: a uvicorn server on the tiny llama with four adapters (two prompts,
a deep one and a late one), at small limits, its engine throttled on request; and clients of it.

Each test module gets its own server; a module that needs another setup defines its own ``server``.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from softprompt.core.prompt import PromptConfig
from softprompt.core.prompted import SoftPromptModel
from softprompt.inference.engine import AdapterRegistry, Engine
from softprompt.inference.serve import ServeConfig
from tests.inference.serving import LIMITS, MODEL, Throttle, llama_with_adapters, running, tiny_engine


@pytest.fixture(scope="module")
def server(tiny_dirs, tmp_path_factory):
    base, adapters = llama_with_adapters(tiny_dirs, tmp_path_factory.mktemp("adapters"), ["alpha", "beta"], 5)
    for name, form, entry in (("deep", "kv", 0), ("late", "vectors", 1)):  # served like every prompt
        config = PromptConfig(num_virtual_tokens=4, init="vocab", form=form, entry_layer=entry)
        SoftPromptModel.with_new_prompt(base, config, seed=len(name)).save_pretrained(adapters / name)
    engine = tiny_engine(base, adapters)
    slow = Throttle(engine)
    # Admin on without a key: allowed on loopback only (test_serve_auth.py covers the key).
    config = ServeConfig(served_model_name=MODEL, enable_adapter_admin=True, **LIMITS)
    reference = Engine(base, AdapterRegistry(base, adapters))
    reference.registry.scan()
    with running(engine, config) as (url, uv):
        yield url, reference, slow


@pytest.fixture
def client(server):
    url, _, slow = server
    slow.delay = 0.0
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30) as c:
        yield c


@pytest.fixture
def raw(server):
    with httpx.Client(base_url=server[0], timeout=30) as c:
        yield c
