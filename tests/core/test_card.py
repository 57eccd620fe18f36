"""The model card every training run writes: Hub metadata that agrees with adapter_config.json, and the
sections a reader needs (what it is, data, training, results, curve, how to load it)."""

import json

import pytest
from huggingface_hub import ModelCard

from softprompt.core.card import CARD_NAME, card_data, hub_base_model, write_model_card
from softprompt.core.data import DataConfig
from softprompt.core.prompt import PromptConfig
from softprompt.core.prompted import SoftPromptModel
from softprompt.training.train import TrainConfig, train, tune
from tests.training.test_train import ROWS


@pytest.fixture(scope="module")
def trained(tiny_dirs, tmp_path_factory):
    """A supervised run through tune(), as `softprompt train` does it."""
    root = tmp_path_factory.mktemp("card")
    data = root / "private-folder" / "complaints.jsonl"
    data.parent.mkdir()
    rows = [{"text": f"tweet number {i} about a late train", "label": "yes" if i % 2 else "no"} for i in range(24)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = root / "complaints-prompt"
    result = tune(
        str(tiny_dirs["llama"]),
        DataConfig(data=str(data), template="Tweet: {text} Label:", target_column="label", limit=16, max_length=32),
        PromptConfig(num_virtual_tokens=3, init="random"),
        TrainConfig(output=str(output), epochs=2, batch_size=4, progress=False),
        device="cpu",
    )
    return output, result.metrics, data


def test_card_metadata_agrees_with_adapter_config(trained):
    output, metrics, _ = trained
    card = ModelCard.load(output / CARD_NAME)
    config = json.loads((output / "adapter_config.json").read_text())
    base = config["base_model_name_or_path"]
    assert card.data.library_name == "peft"
    assert card.data.base_model == base
    assert card.data.pipeline_tag == "text-generation"
    assert {"prompt-tuning", "softprompt", f"base_model:adapter:{base}"} <= set(card.data.tags)
    (result,) = card.data.eval_results
    assert (result.metric_type, result.dataset_name, result.dataset_split) == ("loss", "complaints.jsonl", "held-out")
    assert result.metric_value == pytest.approx(config["softprompt_metrics"]["heldout_loss_after"], abs=1e-6)
    assert card.data.model_name == output.name


def test_card_body_says_what_how_and_how_well(trained):
    output, metrics, data = trained
    text = (output / CARD_NAME).read_text()
    for heading in ("## Training data", "## Training", "## Results", "## Loss curve", "## How to use"):
        assert heading in text
    assert "3 virtual tokens of width 32 (96 trained numbers)" in text
    assert "16 training rows, 8 held-out rows" in text
    assert "template `'Tweet: {text} Label:'`, target column `label`" in text
    assert f"| base model alone (before) | {metrics['heldout_loss_before']:.4f} |" in text
    assert f"| with this prompt (after) | {metrics['heldout_loss_after']:.4f} |" in text
    assert f"| optimizer steps | {metrics['optimizer_steps']} |" in text
    assert "![training and held-out loss per optimizer step](loss_curve.png)" in text
    assert (output / "loss_curve.png").is_file()
    assert "PeftModel.from_pretrained(base" in text and "softprompt generate --model" in text
    assert str(data.parent) not in text, "a card is for sharing: no local data paths"


def test_card_from_train_without_run_info_says_the_source_is_unrecorded(llama, tmp_path):
    model = SoftPromptModel.with_new_prompt(llama, PromptConfig(num_virtual_tokens=2, init="random"))
    train(model, ROWS, ROWS[:2], TrainConfig(output=str(tmp_path), epochs=1, batch_size=3, progress=False))
    card = ModelCard.load(tmp_path / CARD_NAME)
    assert "Source not recorded" in card.text
    assert card.data.eval_results[0].dataset_name == "unrecorded"


def test_builtin_base_maps_to_its_hub_model_and_accuracies_become_results():
    config = {"base_model_name_or_path": "smollm2-135m", "num_virtual_tokens": 8, "token_dim": 576}
    metrics = {"heldout_loss_after": 1.5, "accuracy": 0.75, "macro_f1": 0.5}
    data = card_data("p", config, metrics, {"data": "hf:fka/awesome-chatgpt-prompts:train"})
    hub = hub_base_model("smollm2-135m")
    assert data.base_model == hub == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert f"base_model:adapter:{hub}" in data.tags
    assert data.datasets == ["fka/awesome-chatgpt-prompts"]
    assert {(r.metric_type, r.metric_value) for r in data.eval_results} == {
        ("loss", 1.5),
        ("accuracy", 0.75),
        ("f1", 0.5),
    }


def test_rewriting_a_card_replaces_it_whole(trained, tmp_path):
    output, metrics, _ = trained
    for name in ("adapter_config.json", "loss_curve.png"):
        (tmp_path / name).write_bytes((output / name).read_bytes())
    (tmp_path / CARD_NAME).write_text("old card")
    write_model_card(tmp_path, {**metrics, "heldout_loss_after": 0.125}, [])
    assert ModelCard.load(tmp_path / CARD_NAME).data.eval_results[0].metric_value == 0.125
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "adapter_config.json", "loss_curve.png"]
