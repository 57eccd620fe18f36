import pytest
import torch

from softprompt.core.data import Example, batches
from softprompt.core.errors import AdapterError, BaseModelMismatchError
from softprompt.core.forms import Form, Prompt
from softprompt.core.prompt import PromptConfig
from softprompt.core.prompted import SoftPromptModel
from softprompt.training.train import TrainConfig, train


def _task(n=12):
    """A learnable task: every row is 'ab' repeated; a prompt can make it predictable."""
    return [Example(list(b"abababab"), list(b"abababab")) for _ in range(n)]


def test_only_the_prompt_gets_gradients(tiny):
    model = SoftPromptModel.with_new_prompt(tiny, PromptConfig(num_virtual_tokens=3, init="random"))
    batch = next(batches(_task(2), 2, tiny.tokenizer.pad_token_id))
    loss, count = model.loss(batch.input_ids, batch.attention_mask, batch.labels)
    (loss / count).backward()
    assert model.prompt.embedding.grad is not None and model.prompt.embedding.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in tiny.model.parameters())


def test_training_lowers_loss_and_leaves_base_bit_identical(tiny, tmp_path):
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    model = SoftPromptModel.with_new_prompt(tiny, PromptConfig(num_virtual_tokens=4, init="random"))
    result = train(
        model, _task(), _task(4), TrainConfig(output=str(tmp_path), lr=0.1, epochs=4, batch_size=4, progress=False)
    )
    assert result.metrics["heldout_loss_after"] < result.metrics["heldout_loss_before"]
    after = tiny.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_loss_counts_only_labelled_tokens(llama):
    model = SoftPromptModel.with_new_prompt(llama, PromptConfig(num_virtual_tokens=2, init="random"))
    example = Example([1, 2, 3, 4], [-100, -100, 3, 4])
    batch = next(batches([example], 1, 0))
    _, count = model.loss(batch.input_ids, batch.attention_mask, batch.labels)
    assert count == 2


def test_loss_is_the_same_batched_and_alone(tiny):
    model = SoftPromptModel.with_new_prompt(tiny, PromptConfig(num_virtual_tokens=3, init="random"))
    rows = [Example(list(b"hello"), list(b"hello")), Example(list(b"a longer row"), list(b"a longer row"))]
    batch = next(batches(rows, 2, tiny.tokenizer.pad_token_id))
    total, _ = model.loss(batch.input_ids, batch.attention_mask, batch.labels)
    alone = sum(float(model.loss(b.input_ids, b.attention_mask, b.labels)[0]) for b in batches(rows, 1, 0))
    assert float(total) == pytest.approx(alone, rel=1e-5)


def test_adapter_for_another_hidden_size_is_refused(tiny_dirs, tmp_path):
    from tests.conftest import load_tiny

    llama = load_tiny(tiny_dirs, "llama")
    model = SoftPromptModel.with_new_prompt(llama, PromptConfig(num_virtual_tokens=2, init="random"))
    model.save_pretrained(tmp_path)
    from softprompt.core.adapter import AdapterConfig, load_adapter, save_adapter

    wide = load_adapter(tmp_path)
    config = AdapterConfig(num_virtual_tokens=2, token_dim=64)
    save_adapter(tmp_path / "wide", Prompt(Form.VECTORS, torch.zeros(2, 64)), config)
    with pytest.raises(BaseModelMismatchError, match="token_dim 64.*hidden size 32"):
        SoftPromptModel.from_pretrained(llama, tmp_path / "wide")
    assert wide.embedding.shape == (2, 32)


def test_fingerprint_mismatch_is_an_error_unless_allowed(tiny_dirs, tmp_path, caplog):
    from tests.conftest import load_tiny

    llama, qwen = load_tiny(tiny_dirs, "llama"), load_tiny(tiny_dirs, "qwen2")
    SoftPromptModel.with_new_prompt(llama, PromptConfig(num_virtual_tokens=2, init="random")).save_pretrained(tmp_path)
    with pytest.raises(BaseModelMismatchError, match="--allow-base-mismatch"):
        SoftPromptModel.from_pretrained(qwen, tmp_path)
    loaded = SoftPromptModel.from_pretrained(qwen, tmp_path, allow_base_mismatch=True)
    assert loaded.prompt is not None and "loading anyway" in caplog.text


def test_saving_without_a_prompt_is_a_clear_error(llama, tmp_path):
    with pytest.raises(AdapterError, match="no soft prompt"):
        SoftPromptModel(llama).save_pretrained(tmp_path)
