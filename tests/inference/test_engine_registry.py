"""Adapter registry: directory scan, LRU memory bound, base-model checks, safe names and paths."""

import pytest
import torch

from softprompt.core.errors import AdapterError, BaseModelMismatchError
from softprompt.core.prompt import PromptConfig
from softprompt.core.prompted import SoftPromptModel
from softprompt.inference.engine import AdapterRegistry, Engine, RegistryConfig, SamplingParams
from tests.conftest import load_tiny


def save_prompts(base, root, names, tokens=4):
    for seed, name in enumerate(names):
        model = SoftPromptModel.with_new_prompt(base, PromptConfig(num_virtual_tokens=tokens, init="random"), seed)
        model.save_pretrained(root / name)


def _kv(registry, name):
    engine_runner = Engine(registry.base, registry).runner
    return registry.prompt_kv(name, engine_runner.kv_key, engine_runner.prompt_kv)


def test_scan_lists_good_adapters_and_skips_bad_ones(llama, tiny_dirs, tmp_path):
    save_prompts(llama, tmp_path, ["alpha", "beta"])
    save_prompts(load_tiny(tiny_dirs, "qwen2"), tmp_path, ["other-base"])  # same width, other weights
    save_prompts(llama, tmp_path, [".hidden"])
    registry = AdapterRegistry(llama, tmp_path)
    assert registry.scan() == ["alpha", "beta"]
    with pytest.raises(BaseModelMismatchError, match="fingerprint"):
        registry.add("other-base")


def test_lru_eviction_keeps_memory_bounded_and_reloads_on_use(llama, tmp_path):
    save_prompts(llama, tmp_path, ["a", "b", "c"])
    probe = AdapterRegistry(llama, tmp_path)
    probe.add("a")
    _kv(probe, "a")
    one = probe._entries["a"].nbytes  # embedding + prompt KV of one adapter
    registry = AdapterRegistry(llama, tmp_path, RegistryConfig(max_loaded_bytes=2 * one))
    registry.scan()
    for name in ("a", "b", "c"):
        _kv(registry, name)
    assert registry.loaded_names() == ["b", "c"] and registry.names() == ["a", "b", "c"]
    first = _kv(registry, "a")  # evicted adapters are read back from disk
    assert registry.loaded_names() == ["c", "a"]
    torch.testing.assert_close(first.layers[0][0], _kv(probe, "a").layers[0][0])


def test_evicted_adapter_still_generates_the_same(llama, tmp_path):
    save_prompts(llama, tmp_path, ["a", "b"])
    roomy = Engine(llama, AdapterRegistry(llama, tmp_path))
    tight = Engine(llama, AdapterRegistry(llama, tmp_path, RegistryConfig(max_loaded_bytes=1)))
    roomy.registry.scan(), tight.registry.scan()
    params = SamplingParams(max_new_tokens=5, stop_at_eos=False)
    want = [s.output_ids for s in roomy.generate(["xy", "zw", "xy"], ["a", "b", "a"], params)]
    assert [s.output_ids for s in tight.generate(["xy", "zw", "xy"], ["a", "b", "a"], params)] == want


@pytest.mark.parametrize("name", ["", "../a", "a/b", "/abs", ".hidden", "-dash", "a" * 65, "a b", "a\\b", None, 3])
def test_bad_names_are_refused_before_any_file_access(llama, tmp_path, name):
    with pytest.raises(AdapterError, match="invalid adapter name"):
        AdapterRegistry(llama, tmp_path).add(name)


def test_paths_outside_the_root_are_refused(llama, tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    save_prompts(llama, outside, ["x"])
    (root / "link").symlink_to(outside / "x")
    registry = AdapterRegistry(llama, root)
    for path in (outside / "x", "../outside/x", "link"):
        with pytest.raises(AdapterError, match="outside the adapters directory"):
            registry.add("x", path)
    with pytest.raises(AdapterError, match="outside"):
        registry.add("link")


def test_add_remove_at_runtime(llama, tmp_path):
    save_prompts(llama, tmp_path, ["sub"])
    registry = AdapterRegistry(llama, tmp_path)
    registry.add("renamed", "sub")
    assert "renamed" in registry and registry.num_virtual_tokens("renamed") == 4
    registry.remove("renamed")
    assert registry.names() == []
    with pytest.raises(AdapterError, match="unknown adapter"):
        registry.remove("renamed")
    with pytest.raises(AdapterError, match="not found"):
        registry.add("missing")


def test_peft_saved_adapters_are_served(llama, tiny_dirs, tmp_path):
    from peft import PromptTuningConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"])
    get_peft_model(plain, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=6)).save_pretrained(
        tmp_path / "from-peft"
    )
    registry = AdapterRegistry(llama, tmp_path)
    assert registry.scan() == ["from-peft"] and registry.num_virtual_tokens("from-peft") == 6
    rows = Engine(llama, registry).generate(["abc"], ["from-peft"], SamplingParams(max_new_tokens=3, stop_at_eos=False))
    assert len(rows[0].output_ids) == 3


@pytest.mark.parametrize("path", ["br\x00oken", "\udfff", "a" * 300])
def test_paths_no_filesystem_can_hold_are_an_adapter_error_without_the_server_path(llama, tmp_path, path):
    with pytest.raises(AdapterError, match="cannot be read as a directory") as info:
        AdapterRegistry(llama, tmp_path).add("x", path)
    assert str(tmp_path) not in str(info.value) and "\n" not in str(info.value)
