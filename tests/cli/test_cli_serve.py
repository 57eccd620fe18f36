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
