"""The walkthrough on a tiny model: its adapter gets a model card naming the data, and the run can be resumed."""

from huggingface_hub import ModelCard

from softprompt.core.data import DataConfig
from softprompt.core.prompt import PromptConfig
from softprompt.demo import run_demo
from softprompt.inference.generate import GenerateConfig
from softprompt.training.train import TrainConfig, resume


def test_demo_adapter_has_a_card_and_resumes(tiny_dirs, tmp_path):
    report = run_demo(
        model=str(tiny_dirs["llama"]),
        data=DataConfig(limit=8, eval_rows=4, max_length=24),
        prompt=PromptConfig(num_virtual_tokens=2, init="random"),
        training=TrainConfig(output=str(tmp_path), epochs=1, batch_size=4, progress=False),
        generation=GenerateConfig(max_new_tokens=4),
    )
    card = ModelCard.load(tmp_path / "README.md")
    assert "source: `demo_roles.csv`; 8 training rows, 4 held-out rows" in card.text
    assert card.data.base_model == str(tiny_dirs["llama"]) == report.metrics["base_model"]
    assert resume(tmp_path, epochs=2).metrics["epochs_run"] == 2
