"""The public API (softprompt/__init__.py): exactly ``__all__``, sorted, the engine included."""

import softprompt


def test_public_api_is_exactly_all():
    public = {name for name in vars(softprompt) if not name.startswith("_")}
    modules = {name for name in public if type(getattr(softprompt, name)).__name__ == "module"}
    assert public - modules - {"annotations"} == set(softprompt.__all__)
    assert all(hasattr(softprompt, name) for name in softprompt.__all__)


def test_every_public_name_is_exported():
    assert sorted(softprompt.__all__) == softprompt.__all__ and all(hasattr(softprompt, n) for n in softprompt.__all__)


def test_public_api_exports_the_engine():
    assert {"Engine", "EngineConfig", "SamplingParams", "AdapterRegistry", "RegistryConfig"} <= set(softprompt.__all__)
    assert all(hasattr(softprompt, name) for name in softprompt.__all__)
