"""Credentials: the API key on every route but /health, /metrics and the static playground page; adapter admin off unless enabled."""

from __future__ import annotations

import httpx
import openai
import pytest

from softprompt.inference.serve import ServeConfig
from softprompt.inference.serve.auth import bearer_token
from tests.inference.serving import llama_with_adapters, running, tiny_engine

KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def keyed(tiny_dirs, tmp_path_factory):
    """A server with a key and adapter admin on; and one with neither (the defaults)."""
    base, adapters = llama_with_adapters(tiny_dirs, tmp_path_factory.mktemp("auth-adapters"), ["alpha", "beta"], 3)
    config = ServeConfig(served_model_name="tiny", api_key=KEY, enable_adapter_admin=True, default_max_tokens=4)
    with running(tiny_engine(base, adapters), config) as (url, _):
        with running(tiny_engine(base, adapters), ServeConfig(served_model_name="tiny")) as (open_url, _):
            yield url, open_url


def _sdk(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


def test_the_sdk_needs_the_right_key(keyed):
    url, _ = keyed
    with _sdk(url, "sk-wrong") as client, pytest.raises(openai.AuthenticationError):
        client.completions.create(model="alpha", prompt="x", max_tokens=2)
    with _sdk(url, "sk-wrong") as client, pytest.raises(openai.AuthenticationError):
        client.models.list()
    with _sdk(url, KEY) as client:
        assert client.completions.create(model="alpha", prompt="x", max_tokens=2).choices[0].finish_reason
        assert [m.id for m in client.models.list().data] == ["tiny", "alpha", "beta"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": KEY},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {KEY}x"},
        {"Authorization": f"Bearer {KEY[:-1]}"},
        {"X-Api-Key": KEY},
    ],
)
def test_missing_or_wrong_key_is_401_in_openai_shape(keyed, headers):
    url, _ = keyed
    for method, path in [
        ("POST", "/v1/completions"),
        ("GET", "/v1/models"),
        ("DELETE", "/v1/adapters/alpha"),
        ("GET", "/v1/adapters/alpha"),
        ("GET", "/v1/unknown"),
        ("GET", "/openapi.json"),
        ("GET", "/static/../v1/models"),
        ("GET", "/docs"),
    ]:
        response = httpx.request(method, url + path, headers=headers, json={"model": "alpha", "prompt": "x"})
        assert response.status_code == 401, (path, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
        assert KEY not in response.text and response.headers["www-authenticate"] == "Bearer"
    assert "alpha" in httpx.get(url + "/v1/models", headers={"Authorization": f"bearer {KEY}"}).text  # any case


def test_health_and_metrics_stay_open(keyed):
    url, _ = keyed
    assert httpx.get(url + "/health").json()["status"] == "ok"
    httpx.post(url + "/v1/completions", json={})
    # Refused before routing, yet counted under the route's template.
    assert 'softprompt_http_requests_total{route="/v1/completions",status="401"}' in httpx.get(url + "/metrics").text


def test_the_playground_page_is_open_and_holds_no_data(keyed):
    """The page and its script load without the key (it asks for one); what it shows comes from /v1."""
    url, _ = keyed
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "alpha" not in page.text
    assert httpx.get(url + "/static/playground.js").status_code == 200
    assert httpx.get(url + "/v1/adapters/alpha").status_code == 401


def test_adapter_admin_needs_the_key_when_enabled(keyed, tmp_path):
    url, _ = keyed
    body = {"name": "gamma", "path": "beta"}
    assert httpx.post(url + "/v1/adapters", json=body).status_code == 401
    assert httpx.delete(url + "/v1/adapters/alpha").status_code == 401
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.post(url + "/v1/adapters", json=body, headers=auth).status_code == 201
    assert httpx.delete(url + "/v1/adapters/gamma", headers=auth).json()["deleted"] is True


def test_adapter_admin_is_off_by_default(keyed):
    _, url = keyed
    for response in (
        httpx.post(url + "/v1/adapters", json={"name": "gamma", "path": "beta"}),
        httpx.delete(url + "/v1/adapters/alpha"),
    ):
        assert response.status_code == 403
        assert "--enable-adapter-admin" in response.json()["error"]["message"]
    assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["tiny", "alpha", "beta"]


def test_bearer_parsing():
    assert bearer_token([(b"authorization", b"Bearer abc")]) == b"abc"
    assert bearer_token([(b"authorization", b"BEARER   abc ")]) == b"abc"
    assert bearer_token([(b"authorization", b"Token abc")]) is None
    assert bearer_token([(b"x", b"Bearer abc")]) is None
