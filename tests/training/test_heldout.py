"""Held-out scoring: tokens 1..n-1 of each row, one model or several in shared passes, each as it scores alone."""

import math

import pytest
import torch

from softprompt.core.prompt import PromptConfig
from softprompt.core.prompted import SoftPromptModel
from softprompt.training.heldout import mean_token_loss, mean_token_losses
from tests.conftest import row_examples


def test_the_bare_model_scores_what_transformers_computes(llama):
    """Without a prompt the score is the model's own causal-LM loss over tokens 1..n-1, token-weighted."""
    rows = row_examples(llama.tokenizer, supervised=False)
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            if len(row.input_ids) < 2:  # a one-token row has nothing to predict (transformers: NaN)
                continue
            ids = torch.tensor([row.input_ids])
            total += float(llama.model(input_ids=ids, labels=ids).loss) * (len(row.input_ids) - 1)
            count += len(row.input_ids) - 1
    assert mean_token_loss(SoftPromptModel(llama), rows, batch_size=3) == pytest.approx(total / count, rel=1e-5)


def test_several_prompts_scored_together_equal_each_alone(llama):
    models = [
        SoftPromptModel.with_new_prompt(llama, PromptConfig(num_virtual_tokens=n, init="random"), seed=n)
        for n in (2, 3, 5)
    ]
    rows = row_examples(llama.tokenizer, supervised=False)
    alone = [mean_token_loss(model, rows, batch_size=3) for model in models]
    assert mean_token_losses(models, rows, batch_size=2) == pytest.approx(alone, rel=1e-5)
    assert len(set(alone)) == 3  # three prompts, three scores


def test_no_rows_is_nan_not_zero(llama):
    assert math.isnan(mean_token_loss(SoftPromptModel(llama), []))
