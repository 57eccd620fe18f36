"""OpenAI-compatible serving of one base model and many soft prompts (``softprompt serve``)."""

from __future__ import annotations

import logging
from pathlib import Path

from softprompt.core.errors import AdapterError
from softprompt.core.files import require_dir
from softprompt.inference.engine import EngineConfig, RegistryConfig
from softprompt.inference.serve.app import create_app
from softprompt.inference.serve.config import ServeConfig

log = logging.getLogger(__name__)

__all__ = ["ServeConfig", "create_app", "serve"]


def serve(
    model: str,
    adapters: str | Path | None,
    config: ServeConfig,
    engine_config: EngineConfig | None = None,
    registry_config: RegistryConfig | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
) -> None:
    """Load the model and adapters, then serve until SIGTERM/SIGINT, drain, and return."""
    from softprompt.core.loading import load_base_model
    from softprompt.inference.engine import AdapterRegistry, Engine
    from softprompt.inference.serve.server import run

    for warning in config.warnings():
        log.warning(warning)
    if adapters is not None:  # before the model loads: a typo costs a second
        require_dir(adapters, "--adapters: adapters directory", AdapterError)
    base = load_base_model(model, device=device, trust_remote_code=trust_remote_code)
    registry = AdapterRegistry(base, adapters, registry_config)
    if adapters is not None:
        log.info("loaded adapters: %s", ", ".join(registry.scan()) or "none")
    app = create_app(Engine(base, registry, engine_config), config)
    log.info(
        "API key: %s; adapter admin: %s; drain on stop: %g s",
        "required" if config.api_key else "none",
        "on" if config.enable_adapter_admin else "off",
        config.drain_seconds,
    )
    run(app, config.host, config.port)
