"""The playground in a real browser: the real `softprompt serve` process on a tiny model with two
trained adapters, driven through headless Debian Chromium.

Skipped when chromium or chromedriver is absent, except under CI (the variable CI set), where a
missing browser fails the run: .ci/run installs both.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest

from softprompt.core.data import DataConfig
from softprompt.core.prompt import PromptConfig
from softprompt.training.train import TrainConfig, tune
from tests.inference.browser import chromium, missing_browser, serve_process

MODEL = "tiny"
ADAPTERS = ("alpha", "beta")
MAX_TOKENS = 64
WAIT_S = 90  # the shared 2-core machine can be slow; a passing run takes a few seconds


def _need_browser() -> None:
    missing = missing_browser()
    if not missing:
        return
    message = f"{' and '.join(missing)} not found (apt-get install chromium chromium-driver)"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must run the browser tests")
    pytest.skip(message)


@pytest.fixture(scope="module")
def adapters(tiny_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    for seed, name in enumerate(ADAPTERS):
        tune(
            str(tiny_dirs["llama"]),
            DataConfig(limit=12, eval_rows=4, max_length=24),
            PromptConfig(num_virtual_tokens=3 + seed, init="random"),
            TrainConfig(output=str(root / name), epochs=2, batch_size=4, seed=seed, progress=False),
            device="cpu",
        )
    return root


@pytest.fixture(scope="module")
def browser():
    _need_browser()
    from selenium.webdriver.common.selenium_manager import SeleniumManager

    def refuse(*args, **kwargs):
        raise AssertionError("Selenium Manager must not run: it would download a driver")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SeleniumManager, "binary_paths", refuse)
        with chromium() as driver:
            yield driver


@pytest.fixture(scope="module")
def server(browser, tiny_dirs, adapters, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    extra = ("--served-model-name", MODEL, "--max-tokens", str(MAX_TOKENS), "--default-max-tokens", "16")
    with serve_process(str(tiny_dirs["llama"]), adapters, log, *extra) as url:
        yield url


@pytest.fixture
def page(browser, server):
    """The page freshly loaded, with its console drained; yields the driver."""
    browser.get(server + "/")
    _wait_loads(browser, 1)
    browser.get_log("browser")
    return browser


def _wait(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(lambda d: condition(d), message=what)


def _wait_loads(driver, count: int) -> None:
    _wait(
        driver,
        lambda d: int(d.find_element("tag name", "body").get_attribute("data-loads") or 0) >= count,
        "the page did not finish loading the models",
    )


def _severe(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _set(driver, element_id: str, value: str) -> None:
    field = driver.find_element("id", element_id)
    field.clear()
    field.send_keys(value)


def _run_and_wait(driver) -> list:
    driver.find_element("id", "run").click()
    columns = lambda d: d.find_elements("css selector", "#answers .column")  # noqa: E731
    _wait(
        driver,
        lambda d: columns(d) and all(c.get_attribute("data-state") in ("done", "error") for c in columns(d)),
        "the answers did not finish",
    )
    return columns(driver)


def _text(element) -> str:
    return element.get_property("textContent")


def test_page_lists_models_and_describes_each_adapter(page, adapters):
    choices = page.find_elements("css selector", '#models input[name="model"]')
    assert [c.get_attribute("value") for c in choices] == [MODEL, *ADAPTERS]
    panels = page.find_elements("css selector", "#panels .panel")
    assert [p.get_attribute("data-adapter") for p in panels] == list(ADAPTERS)
    for panel, name in zip(panels, ADAPTERS):
        metrics = json.loads((adapters / name / "metrics.json").read_text())
        text = _text(panel)
        assert f"{metrics['heldout_loss_before']:.3f} → {metrics['heldout_loss_after']:.3f}" in text
        assert f"virtual tokens{metrics['num_virtual_tokens']} × 32" in text
        assert "demo_roles.csv, 12 training / 4 held-out rows" in text
        assert len(panel.find_elements("css selector", "svg polyline.train")) == 1
        assert len(panel.find_elements("css selector", "svg circle.eval-point")) == 3  # before, epoch 1, epoch 2
    assert _severe(page) == []


def test_a_request_streams_into_every_chosen_column(page, server):
    page.find_element("css selector", '#models input[value="alpha"]').click()  # answer with tiny and beta only
    prompt = "I want you to act as a logistician. "
    _set(page, "prompt", prompt)
    _set(page, "max-tokens", "24")
    columns = _run_and_wait(page)
    assert [c.get_attribute("data-model") for c in columns] == [MODEL, "beta"]
    for column in columns:
        model = column.get_attribute("data-model")
        assert column.get_attribute("data-state") == "done", _text(column)
        assert int(column.get_attribute("data-chunks")) > 1, "the answer arrived in one piece, not streamed"
        body = {"model": model, "prompt": prompt, "max_tokens": 24, "temperature": 0}
        expected = httpx.post(server + "/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
        assert _text(column.find_element("css selector", ".output")) == expected
    assert _severe(page) == []


def test_chat_requests_stream_too(page, server):
    for name in ADAPTERS:
        page.find_element("css selector", f'#models input[value="{name}"]').click()
    page.find_element("css selector", '#endpoint option[value="chat"]').click()
    _set(page, "max-tokens", "12")
    (column,) = _run_and_wait(page)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": _text(page.find_element("id", "prompt"))}],
        "max_tokens": 12,
        "temperature": 0,
    }
    expected = httpx.post(server + "/v1/chat/completions", json=body, timeout=60).json()
    assert _text(column.find_element("css selector", ".output")) == expected["choices"][0]["message"]["content"]
    assert _severe(page) == []


def test_a_refused_request_shows_the_servers_message(page):
    _set(page, "max-tokens", str(MAX_TOKENS + 1))
    columns = _run_and_wait(page)
    assert len(columns) == 3
    for column in columns:
        assert column.get_attribute("data-state") == "error"
        shown = _text(column.find_element("css selector", ".error"))
        assert shown == f"HTTP 400: max_tokens is {MAX_TOKENS + 1}, more than the limit of {MAX_TOKENS}."
    # The browser reports each refused fetch as a failed resource load; nothing else may be an error.
    assert all("status of 400" in e["message"] for e in _severe(page))


def test_a_wrong_key_shows_a_readable_error(browser, tiny_dirs, adapters, tmp_path):
    with serve_process(str(tiny_dirs["llama"]), adapters, tmp_path / "serve.log", "--api-key", "right-key") as url:
        refused = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong-key"})
        assert refused.status_code == 401
        message = refused.json()["error"]["message"].rstrip(".")
        browser.get(url + "/")
        _wait_loads(browser, 1)
        _set(browser, "api-key", "wrong-key")
        browser.find_element("id", "reload").click()
        _wait_loads(browser, 2)
        banner = browser.find_element("id", "banner")
        assert banner.is_displayed()
        assert f"HTTP 401: {message}. Check the API key field." in _text(banner)
        assert browser.find_elements("css selector", "#panels .panel") == []
        assert all("status of 401" in e["message"] for e in _severe(browser))
        _set(browser, "api-key", "right-key")
        browser.find_element("id", "reload").click()
        _wait_loads(browser, 3)
        assert not browser.find_element("id", "banner").is_displayed()
        assert len(browser.find_elements("css selector", "#panels .panel")) == len(ADAPTERS)
        assert _severe(browser) == []
