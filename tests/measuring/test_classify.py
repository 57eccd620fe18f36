"""Rank classification against a hand computation, the one-pass paths, ensembles and votes."""

import pytest
import torch

from softprompt.core.forms import Form, Prompt
from softprompt.measuring.classify import (
    Scorer,
    engine_scorer,
    hf_scorer,
    metrics,
    model_scorer,
    score_labels,
    vote,
)

TEXTS = ["Tweet: the train is late again\nComplaint:", "Tweet: thanks!\nComplaint:", "x"]


def hand_scores(base, texts, words, prompt=None, space=" "):
    """log p(label tokens | text) from one full forward per (text, label) pair, no batching."""
    tok = base.tokenizer
    out = torch.empty(len(texts), len(words))
    for i, text in enumerate(texts):
        for k, word in enumerate(words):
            ctx = tok(text, add_special_tokens=False)["input_ids"]
            lab = tok(space + word, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([ctx + lab])
            embeds = base.model.get_input_embeddings()(ids)
            if prompt is not None:
                embeds = torch.cat([prompt[None], embeds], dim=1)
            with torch.no_grad():
                logits = base.model(inputs_embeds=embeds).logits[0].log_softmax(-1)
            start = embeds.shape[1] - len(lab)
            out[i, k] = sum(logits[start + j - 1, t] for j, t in enumerate(lab))
    return out


def test_multi_token_labels_match_hand_computation(tiny):
    words = ["yes", "no complaint"]  # several byte tokens each, different lengths
    scores = score_labels(model_scorer(tiny, [None]), tiny.tokenizer, TEXTS, words, batch_size=2)
    assert scores.shape == (1, 3, 2)
    torch.testing.assert_close(scores[0], hand_scores(tiny, TEXTS, words), atol=1e-4, rtol=1e-4)


def test_soft_prompt_scores_match_hand_computation(llama):
    vectors = torch.randn(3, llama.hidden_size) * 0.3
    words = ["ab", "c"]
    scorer = model_scorer(llama, [Prompt(Form.VECTORS, vectors)])
    scores = score_labels(scorer, llama.tokenizer, TEXTS, words, batch_size=3)
    torch.testing.assert_close(scores[0], hand_scores(llama, TEXTS, words, vectors), atol=1e-4, rtol=1e-4)


def test_single_token_labels_take_one_pass(llama, monkeypatch):
    """When every label is one token, all labels of a row come from one forward pass."""
    import softprompt.measuring.classify as classify

    # The byte tokenizer has no single-token " a": score labels without the leading space.
    monkeypatch.setattr(
        classify, "label_ids", lambda tok, words: [tok(w, add_special_tokens=False)["input_ids"] for w in words]
    )
    base = model_scorer(llama, [None])
    calls = []

    def counting(ids, mask, keep):
        calls.append((ids.shape[0], keep))
        return base.logits(ids, mask, keep)

    words = ["a", "b", "c"]
    fast = score_labels(Scorer(counting, base.pad_id), llama.tokenizer, TEXTS, words, batch_size=8)
    assert calls == [(len(TEXTS), 1)]  # one row per text, not per (text, label)
    hand = hand_scores(llama, [t[:-1] if t.endswith(" ") else t for t in TEXTS], words, space="")
    torch.testing.assert_close(fast[0], hand, atol=1e-4, rtol=1e-4)


def test_hf_scorer_equals_model_scorer_without_prompt(tiny):
    words = ["yes", "no"]
    a = score_labels(model_scorer(tiny, [None]), tiny.tokenizer, TEXTS, words)
    b = score_labels(hf_scorer(tiny.model, 256, tiny.accepts_position_ids), tiny.tokenizer, TEXTS, words)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scorer", [model_scorer, engine_scorer])
def test_ensemble_in_one_pass_equals_members_alone(llama, scorer):
    prompts = [Prompt(Form.VECTORS, torch.randn(n, llama.hidden_size) * 0.3) for n in (2, 4)] + [None]
    words = ["yes", "no"]
    together = score_labels(scorer(llama, prompts), llama.tokenizer, TEXTS, words, batch_size=2)
    assert together.shape == (3, 3, 2)
    for m, prompt in enumerate(prompts):
        alone = score_labels(model_scorer(llama, [prompt]), llama.tokenizer, TEXTS, words)
        torch.testing.assert_close(together[m], alone[0], atol=1e-4, rtol=1e-4)


def test_votes():
    # 3 members, 2 rows, 2 labels. Row 0: two members weakly prefer label 1, one strongly label 0.
    scores = torch.log(
        torch.tensor(
            [
                [[0.45, 0.55], [0.9, 0.1]],
                [[0.45, 0.55], [0.8, 0.2]],
                [[0.99, 0.01], [0.3, 0.7]],
            ]
        )
    )
    assert vote(scores, "majority").tolist() == [1, 0]
    assert vote(scores, "mean").tolist() == [0, 0]
    tie = torch.log(torch.tensor([[[0.6, 0.4]], [[0.3, 0.7]]]))
    assert vote(tie, "majority").tolist() == [1]  # tie broken by mean log-prob
    with pytest.raises(ValueError):
        vote(scores, "median")


def test_metrics_by_hand():
    pred, gold = [0, 0, 1, 1, 2], [0, 1, 1, 1, 0]
    # class 0: tp1 fp1 fn1 -> 0.5; class 1: tp2 fp0 fn1 -> 0.8; class 2: tp0 -> 0
    assert metrics(pred, gold, 3)["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert metrics(pred, gold, 3)["accuracy"] == pytest.approx(0.6)


def test_engine_path_with_context_equals_prompt_and_context_in_every_row(tiny):
    """Prompt + context keys/values computed once (the engine's path) == both injected in every row."""
    prompts = [Prompt(Form.VECTORS, torch.randn(3, tiny.hidden_size) * 0.3), None]
    context = "Is it a complaint?\n\n"
    words = ["yes", "no"]
    cached = score_labels(engine_scorer(tiny, prompts, context), tiny.tokenizer, TEXTS, words, batch_size=2)
    for m, prompt in enumerate(prompts):
        inline = score_labels(model_scorer(tiny, [prompt]), tiny.tokenizer, [context + t for t in TEXTS], words)
        torch.testing.assert_close(cached[m], inline[0], atol=1e-4, rtol=1e-4)
