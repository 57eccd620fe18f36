"""The playground's server side (serve/playground.py): the page and its assets at / and /static, under a
strict policy, fetching nothing from elsewhere. What it shows of an adapter: tests/inference/test_serve_details.py."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from softprompt.inference.engine import Engine
from softprompt.inference.serve import ServeConfig, create_app
from softprompt.inference.serve.playground import STATIC_DIR


@pytest.fixture
def client(llama):
    with TestClient(create_app(Engine(llama), ServeConfig(served_model_name="tiny"))) as c:
        yield c


def test_page_and_assets_are_served_with_a_strict_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for asset in re.findall(r'(?:src|href)="(static/[^"]+)"', page.text):
        assert client.get("/" + asset).status_code == 200, asset
    assert client.get("/static/../app.py").status_code == 404


def test_shipped_files_fetch_nothing_from_elsewhere():
    """No CDN: the only absolute URL in the page's files is the SVG namespace name (never fetched)."""
    for path in STATIC_DIR.iterdir():
        urls = set(re.findall(r"https?://[^\s\"')]+", path.read_text()))
        assert urls <= {"http://www.w3.org/2000/svg"}, (path.name, urls)
