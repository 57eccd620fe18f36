"""`softprompt serve` is thin: flags become ServeConfig/EngineConfig/RegistryConfig and go to serve()."""

import softprompt.inference.serve
from softprompt.cli.main import main


def test_serve_command_builds_configs_and_calls_serve(monkeypatch):
    seen = {}
    monkeypatch.setattr(softprompt.inference.serve, "serve", lambda *a, **k: seen.update(args=a, kwargs=k))
    argv = ["serve", "--model", "m", "--adapters", "dir", "--host", "127.0.0.1", "--port", "9001"]
    assert main(argv + ["--max-batch-size", "4", "--max-loaded-bytes", "1000", "--enable-adapter-admin"]) == 0
    model, adapters, config, engine, registry = seen["args"]
    assert (model, adapters, config.port, config.enable_adapter_admin) == ("m", "dir", 9001, True)
    assert engine.max_batch_size == 4 and registry.max_loaded_bytes == 1000


def test_bad_serve_option_is_one_line_error(capsys):
    assert main(["serve", "--port", "70000"]) == 2
    assert "port must be in" in capsys.readouterr().err


def _config(monkeypatch, argv):
    seen = {}
    monkeypatch.setattr(softprompt.inference.serve, "serve", lambda *a, **k: seen.update(args=a))
    assert main(["serve", "--model", "m", *argv]) == 0
    return seen["args"][2]


def test_api_key_comes_from_the_flag_or_the_environment(monkeypatch):
    monkeypatch.delenv("SOFTPROMPT_API_KEY", raising=False)
    assert _config(monkeypatch, []).api_key is None
    monkeypatch.setenv("SOFTPROMPT_API_KEY", "from-env")
    assert _config(monkeypatch, []).api_key == "from-env"
    assert _config(monkeypatch, ["--api-key", "from-flag"]).api_key == "from-flag"
    defaults = _config(monkeypatch, [])
    assert (defaults.host, defaults.enable_adapter_admin, defaults.drain_seconds) == ("127.0.0.1", False, 20.0)


def test_admin_on_a_public_host_without_a_key_does_not_start(monkeypatch, capsys):
    monkeypatch.delenv("SOFTPROMPT_API_KEY", raising=False)
    assert main(["serve", "--model", "m", "--host", "0.0.0.0", "--enable-adapter-admin"]) == 2
    assert "without --api-key" in capsys.readouterr().err
