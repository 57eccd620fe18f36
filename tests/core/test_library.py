import json

import pytest
import torch

from softprompt.core.adapter import CONFIG_NAME, load_adapter
from softprompt.core.errors import AdapterError, BaseModelMismatchError, ConfigError
from softprompt.core.forms import Form
from softprompt.core.library import check_base, choose, misfit, read_library, refuse_own_data
from softprompt.core.prompt import Init, PromptConfig
from softprompt.core.prompted import SoftPromptModel


def _save(base, directory, metrics=None, **config):
    options = {"num_virtual_tokens": 3, "init": "random"} | config
    model = SoftPromptModel.with_new_prompt(base, PromptConfig(**options), seed=len(str(directory)))
    model.save_pretrained(directory, metrics=metrics)
    return model


@pytest.fixture
def library(llama, tmp_path):
    root = tmp_path / "library"
    _save(llama, root / "sst2" / "a", {"task": "sst2", "data": "/data/sst2", "validation": {"val_accuracy": 0.8}})
    _save(llama, root / "trec" / "b", {"task": "trec", "data": "/data/trec"}, form="kv")
    _save(llama, root / "rte" / "late", {"task": "rte", "data": "/data/rte"}, form="kv", entry_layer=1)
    _save(llama, root / "long", {"task": "rte", "data": "/data/rte"}, num_virtual_tokens=5)
    lora = root / "lora" / "candidate0"  # compare leaves LoRA adapters beside the prompts: passed over
    lora.mkdir(parents=True)
    (lora / CONFIG_NAME).write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    return root


def test_a_library_lists_every_soft_prompt_and_passes_over_lora(library):
    found = read_library(library)
    assert sorted(p.path.relative_to(library).as_posix() for p in found) == ["long", "rte/late", "sst2/a", "trec/b"]
    first = next(p for p in found if p.task == "sst2").describe(library)
    assert first == {
        "adapter": "sst2/a",
        "task": "sst2",
        "form": "vectors",
        "entry_layer": 0,
        "virtual_tokens": 3,
        "base_model": first["base_model"],
        "validation": {"val_accuracy": 0.8},
    }


def test_an_empty_library_a_broken_adapter_and_a_missing_directory_are_one_line_errors(library, tmp_path):
    with pytest.raises(ConfigError, match="holds no soft-prompt adapter"):
        read_library(tmp_path / "library" / "lora")
    with pytest.raises(ConfigError, match="is not a directory"):
        read_library(tmp_path / "nowhere")
    (library / "sst2" / "a" / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(AdapterError, match=r"prompt library .*library: .*sst2/a.* not a readable safetensors"):
        read_library(library)


def test_a_library_of_another_base_model_is_refused(library, tiny_dirs):
    from softprompt.core.loading import load_base_model

    other = load_base_model(str(tiny_dirs["qwen2"]), device="cpu")
    with pytest.raises(BaseModelMismatchError, match="sst2/a|trec/b|late|long"):
        check_base(read_library(library), other)
    config = json.loads((library / "long" / CONFIG_NAME).read_text())
    config["softprompt_base_fingerprint"] = "sha256:another"
    (library / "long" / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="mixes base models"):
        read_library(library)


def test_input_vectors_start_every_form_other_prompts_only_their_own(library):
    found = {p.path.name: p for p in read_library(library)}
    vectors, kv = PromptConfig(num_virtual_tokens=3), PromptConfig(num_virtual_tokens=3, form="kv")
    late = PromptConfig(num_virtual_tokens=3, form="kv", entry_layer=1)
    assert misfit(found["a"], vectors) is None and misfit(found["a"], kv) is None and misfit(found["a"], late) is None
    assert misfit(found["b"], kv) is None and "starts only its own form" in str(misfit(found["b"], vectors))
    assert misfit(found["late"], late) is None and misfit(found["late"], kv) is not None
    assert "holds 5 virtual tokens" in str(misfit(found["long"], vectors))


def test_choose_scores_every_fitting_start_in_one_call_and_keeps_the_best(llama, library):
    calls = []

    def score(starts):
        calls.append(starts)
        return [{"val_accuracy": float(s.weights.abs().mean()), "val_label_loss": 0.0} for s in starts]

    config = PromptConfig(num_virtual_tokens=3, form="kv", init="library:" + str(library))
    choice = choose(config, llama, score, rank=lambda s: (s["val_accuracy"],))
    (starts,) = calls  # one shared call: the vectors prompt and the kv prompt (the late and long ones skipped)
    assert len(starts) == 2 and all(s.form is Form.KV and s.entry == 0 for s in starts)
    best = max(choice.scores, key=lambda s: s["val_accuracy"])
    assert choice.chosen == best["adapter"] and len(choice.skipped) == 2
    started = choice.config(config)
    assert started.init is Init.FILE and started.init_file == choice.chosen
    if choice.chosen.endswith("b"):  # a kv prompt of this very form continues as it is
        model = SoftPromptModel.with_new_prompt(llama, started)
        assert torch.equal(model.require_prompt().frozen().weights, load_adapter(choice.chosen).prompt.weights)


def test_a_library_where_nothing_fits_says_why(llama, library):
    config = PromptConfig(num_virtual_tokens=7, init="library", init_library=str(library))
    with pytest.raises(ConfigError, match="no prompt in library .* holds 3 virtual tokens, the new prompt 7"):
        choose(config, llama, lambda s: [{} for _ in s], rank=lambda s: (0.0,))


def test_the_library_shorthand_and_its_checks():
    config = PromptConfig(init="library:/some/dir")
    assert config.init is Init.LIBRARY and config.init_library == "/some/dir"
    with pytest.raises(ConfigError, match="needs a library directory"):
        PromptConfig(init="library")
    with pytest.raises(ConfigError, match="prompt library"):
        PromptConfig(init="library:/no/such/dir").require_files()


def test_compare_refuses_prompts_trained_on_its_own_data_or_of_unknown_origin(library, llama, tmp_path):
    found = read_library(library)
    refuse_own_data(found, "/data/twitter", library)  # other tasks' files: fine
    with pytest.raises(ConfigError, match=r"trained on /data/trec, this task's own data"):
        refuse_own_data(found, "/data/trec", library)
    _save(llama, library / "unknown")
    with pytest.raises(ConfigError, match="records no training data"):
        refuse_own_data(read_library(library), "/data/twitter", library)
