"""Server options (serve/config.py): admin off loopback needs a key, a key must be usable and is never shown,
and no request may ask for more tokens than the engine's requests can hold."""

from __future__ import annotations

import pytest

from softprompt.core.errors import ConfigError
from softprompt.inference.serve import ServeConfig
from softprompt.inference.serve.config import is_loopback

KEY = "sk-test-0123456789"


def test_admin_without_a_key_is_refused_off_loopback():
    with pytest.raises(ConfigError, match="--enable-adapter-admin on '0.0.0.0' without --api-key"):
        ServeConfig(host="0.0.0.0", enable_adapter_admin=True)
    with pytest.raises(ConfigError):
        ServeConfig(host="::", enable_adapter_admin=True)
    assert ServeConfig(host="0.0.0.0", enable_adapter_admin=True, api_key=KEY).warnings() == []
    local = ServeConfig(enable_adapter_admin=True)
    assert local.warnings() == ["adapter admin is on without --api-key: any local process can load and unload adapters"]
    assert "without --api-key" in ServeConfig(host="0.0.0.0").warnings()[0]
    assert ServeConfig().warnings() == [] and ServeConfig().enable_adapter_admin is False


@pytest.mark.parametrize("key", ["", "has space", "tab\there", "caf\u00e9", "line\nbreak"])
def test_unusable_keys_are_refused_without_showing_them(key):
    with pytest.raises(ConfigError) as caught:
        ServeConfig(api_key=key)
    assert "api_key" in str(caught.value) and (not key or key not in str(caught.value))


def test_a_token_limit_beyond_what_a_request_can_hold_is_refused_at_start():
    """Else a request under the server's limit would fail to become a SamplingParams: a 500, not a 400."""
    with pytest.raises(ConfigError, match=f"max_tokens must be at most {1 << 30}"):
        ServeConfig(max_tokens=(1 << 30) + 1)


def test_the_key_is_not_in_the_config_repr():
    assert KEY not in repr(ServeConfig(api_key=KEY))


@pytest.mark.parametrize(
    "host,loop",
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_loopback_detection(host, loop):
    assert is_loopback(host) is loop
