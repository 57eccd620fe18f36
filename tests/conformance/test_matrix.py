"""The conformance matrix: every invariant softprompt promises, on every decoder-only family it verifies.

One tiny random model per family (tests/conformance/families.py). docs/architectures.md is this
file's result table, written by ``python -m tests.conformance.write_table``.
"""

from __future__ import annotations

import torch
from peft import PeftModel, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from transformers import AutoModelForCausalLM

from softprompt.core.data import Example, batches
from softprompt.core.family import VERIFIED
from softprompt.core.forms import Form, Prompt
from softprompt.core.prompt import Init, PromptConfig, SoftPrompt
from softprompt.core.prompted import SoftPromptModel
from softprompt.inference.engine import Engine, SamplingParams
from softprompt.inference.generate import GenerateConfig, complete
from softprompt.measuring.classify import engine_scorer, model_scorer, score_labels
from softprompt.training.train import TrainConfig, train
from tests.conformance.families import FAMILIES
from tests.inference.test_generate import reference_greedy

INIT_TEXT = "Classify this:"
TEXTS = ["hello there", "a", "the quick brown fox jumps"]
ROWS = ["hi", "a much longer input row of text", "mid size row", "x"]
CLASSIFY = ["Tweet: the train is late again\nComplaint:", "Tweet: thanks!\nComplaint:", "x"]


def _prompt(base, n=5, seed=1) -> Prompt:
    """A random prompt (vectors at the input) at the scale of the family's own input embeddings."""
    config = PromptConfig(num_virtual_tokens=n, init=Init.RANDOM)
    return SoftPromptModel.with_new_prompt(base, config, seed).require_prompt().frozen()


def _ids(base, texts):
    return base.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(base.device)


def test_every_matrix_family_is_declared_verified():
    assert set(FAMILIES) == VERIFIED


def test_text_init_equals_the_same_text_as_a_hard_prompt(fbase):
    ids = fbase.tokenizer(INIT_TEXT, add_special_tokens=False)["input_ids"]
    config = PromptConfig(num_virtual_tokens=len(ids), init=Init.TEXT, init_text=INIT_TEXT)
    soft = SoftPromptModel.with_new_prompt(fbase, config)
    x = _ids(fbase, ["hello world"]).input_ids
    hard_ids = torch.tensor([ids + x[0].tolist()], device=fbase.device)
    with torch.no_grad():
        mine = soft(x, torch.ones_like(x))
        hard = SoftPromptModel(fbase)(hard_ids, torch.ones_like(hard_ids), keep=x.shape[1])
    torch.testing.assert_close(mine, hard, atol=1e-4, rtol=1e-4)
    assert torch.equal(mine.argmax(-1), hard.argmax(-1))


def test_left_padded_batch_equals_each_row_alone(fbase):
    model = SoftPromptModel(fbase, SoftPrompt.of(_prompt(fbase)))
    enc = _ids(fbase, TEXTS)
    with torch.no_grad():
        batched = model(enc.input_ids, enc.attention_mask)
        for row, text in enumerate(TEXTS):
            alone = _ids(fbase, [text])
            n = alone.input_ids.shape[1]
            torch.testing.assert_close(
                batched[row, -n:], model(alone.input_ids, alone.attention_mask)[0], atol=1e-4, rtol=1e-4
            )


def test_cached_greedy_generation_equals_no_cache_recomputation(fbase):
    prompt = _prompt(fbase)
    prompts = [prompt, None, Prompt(Form.VECTORS, prompt.weights[:3])]
    config = GenerateConfig(max_new_tokens=8, stop_at_eos=False)
    rows = complete(fbase, TEXTS, prompts, config)
    for text, p, row in zip(TEXTS, prompts, rows, strict=True):
        assert reference_greedy(fbase, text, None if p is None else p.weights, 8) == row.token_ids


def _loss_and_grad(model: SoftPromptModel, layout: str) -> tuple[float, torch.Tensor]:
    model.layout = layout  # type: ignore[assignment]
    prompt = model.require_prompt()
    prompt.embedding.grad = None
    total = 0.0
    examples = [Example(ids, list(ids)) for ids in (model.base.tokenizer(t)["input_ids"] for t in ROWS)]
    for batch in batches(examples, 3, model.base.pad_id, group_by_length=False):
        batch = batch.to(model.base.device)
        loss, _ = model.loss(batch.input_ids, batch.attention_mask, batch.labels)
        loss.backward()
        total += float(loss.detach())
    assert prompt.embedding.grad is not None
    return total, prompt.embedding.grad.clone()


def test_every_training_layout_gives_the_plain_loss_and_gradient(fbase):
    model = SoftPromptModel.with_new_prompt(fbase, PromptConfig(num_virtual_tokens=3, init=Init.RANDOM))
    plain = _loss_and_grad(model, "plain")
    layouts = ["shared", "packed"] if fbase.family.packable else ["shared"]
    for layout in layouts:
        loss, grad = _loss_and_grad(model, layout)
        assert loss == __import__("pytest").approx(plain[0], rel=1e-5), layout
        torch.testing.assert_close(grad, plain[1], atol=1e-4, rtol=1e-4)


def test_peft_adapters_load_both_ways_with_equal_logits(fbase, family_dir, tmp_path):
    enc = _ids(fbase, ["the quick brown fox"])
    ours = SoftPromptModel.with_new_prompt(fbase, PromptConfig(num_virtual_tokens=5, init=Init.RANDOM), seed=3)
    ours.save_pretrained(tmp_path / "ours")
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(family_dir), tmp_path / "ours").eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=enc.input_ids.cpu(), attention_mask=enc.attention_mask.cpu()).logits[:, 5:]
        torch.testing.assert_close(ours(enc.input_ids, enc.attention_mask).cpu(), theirs, atol=1e-4, rtol=1e-4)
    config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=6, prompt_tuning_init=PromptTuningInit.RANDOM
    )
    made_by_peft = get_peft_model(AutoModelForCausalLM.from_pretrained(family_dir), config).eval()
    made_by_peft.save_pretrained(tmp_path / "peft")
    loaded = SoftPromptModel.from_pretrained(fbase, tmp_path / "peft")
    with torch.no_grad():
        theirs = made_by_peft(input_ids=enc.input_ids.cpu(), attention_mask=enc.attention_mask.cpu()).logits[:, 6:]
        torch.testing.assert_close(loaded(enc.input_ids, enc.attention_mask).cpu(), theirs, atol=1e-4, rtol=1e-4)


def test_engine_mixed_adapter_batch_equals_each_row_alone(fbase):
    engine = Engine(fbase)
    for name, n in (("five", 5), ("three", 3)):
        engine.registry.add_embedding(name, _prompt(fbase, n, seed=n))
    adapters = ["five", None, "three"]
    params = SamplingParams(max_new_tokens=6, stop_at_eos=False)
    batched = engine.generate(TEXTS, adapters, params)
    for text, name, row in zip(TEXTS, adapters, batched, strict=True):
        assert engine.generate([text], [name], params)[0].output_ids == row.output_ids


def test_rank_classification_through_the_engine_equals_the_model_path(fbase):
    prompts = [_prompt(fbase, 4), None]
    words = ["yes", "no complaint"]
    engine = score_labels(
        engine_scorer(fbase, prompts, "Is it a complaint?\n"), fbase.tokenizer, CLASSIFY, words, batch_size=2
    )
    model = score_labels(
        model_scorer(fbase, prompts), fbase.tokenizer, ["Is it a complaint?\n" + t for t in CLASSIFY], words
    )
    torch.testing.assert_close(engine, model, atol=1e-4, rtol=1e-4)


def test_training_lowers_the_loss_and_leaves_the_base_bit_identical(fbase, tmp_path):
    before = {k: v.clone() for k, v in fbase.model.state_dict().items()}
    rows = [Example(list(b"abababab"), list(b"abababab")) for _ in range(8)]
    model = SoftPromptModel.with_new_prompt(fbase, PromptConfig(num_virtual_tokens=4, init=Init.RANDOM))
    config = TrainConfig(output=str(tmp_path), lr=0.1, epochs=3, batch_size=4, progress=False, checkpoint_every=0)
    result = train(model, rows, rows[:2], config)
    assert result.metrics["heldout_loss_after"] < result.metrics["heldout_loss_before"]
    after = fbase.model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


# Deep and late prompts (softprompt.core.forms): every form, every entry layer, on every family.
DEEP, LATE_VECTORS, LATE_KV = ("kv", 0), ("vectors", 1), ("kv", 1)


def _form(base, form_entry: tuple[str, int], n=3, seed=0, init=Init.RANDOM) -> SoftPromptModel:
    form, entry = form_entry
    config = PromptConfig(num_virtual_tokens=n, init=init, init_text=INIT_TEXT, form=form, entry_layer=entry)
    return SoftPromptModel.with_new_prompt(base, config, seed)


def test_deep_and_late_text_inits_equal_the_text_as_a_hard_prompt(fbase):
    ids = fbase.tokenizer(INIT_TEXT, add_special_tokens=False)["input_ids"]
    x = _ids(fbase, ["hello world"]).input_ids
    hard_ids = torch.tensor([ids + x[0].tolist()], device=fbase.device)
    with torch.no_grad():
        hard = SoftPromptModel(fbase)(hard_ids, torch.ones_like(hard_ids), keep=x.shape[1])
        for form_entry in (DEEP, LATE_VECTORS, LATE_KV):
            mine = _form(fbase, form_entry, n=len(ids), init=Init.TEXT)(x, torch.ones_like(x))
            torch.testing.assert_close(mine, hard, atol=1e-4, rtol=1e-4, msg=lambda m, f=form_entry: f"{f}: {m}")


def test_a_deep_prompt_equals_its_keys_and_values_given_by_hand_as_a_cache(fbase):
    """The model's own forward with the prompt's keys/values in a cache it is handed, positions after them."""
    from transformers import DynamicCache

    model = _form(fbase, DEEP, n=4, seed=2)
    weights = model.require_prompt().folded().to(fbase.device, fbase.dtype)  # [layers, 2, kv, P, d]
    enc = _ids(fbase, ["the quick brown fox"])
    n = enc.input_ids.shape[1]
    cache = DynamicCache(ddp_cache_data=[(w[0][None], w[1][None]) for w in weights], config=fbase.model.config)
    extra = {"position_ids": torch.arange(4, 4 + n, device=fbase.device)[None]} if fbase.accepts_position_ids else {}
    mask = torch.ones(1, 4 + n, dtype=torch.long, device=fbase.device)
    with torch.no_grad():
        by_hand = fbase.model(input_ids=enc.input_ids, attention_mask=mask, cache=cache, use_cache=True, **extra).logits
        torch.testing.assert_close(model(enc.input_ids, enc.attention_mask), by_hand, atol=1e-4, rtol=1e-4)


def test_late_prompts_reusing_the_frozen_layers_equal_them_run_in_full(fbase):
    """Loss and gradient in every layout, with the rows' states below the entry layer computed once and reused."""
    from softprompt.core.reuse import FrozenRows

    for form_entry in (LATE_VECTORS, LATE_KV):
        model = _form(fbase, form_entry, seed=3)
        full = _loss_and_grad(model, "plain")
        model.entry_states = FrozenRows(fbase, model.require_prompt().frozen(), 1 << 30)
        for layout in ["plain", "shared", "packed"] if fbase.family.packable else ["plain", "shared"]:
            loss, grad = _loss_and_grad(model, layout)
            assert loss == __import__("pytest").approx(full[0], rel=1e-5), (form_entry, layout)
            torch.testing.assert_close(grad, full[1], atol=1e-4, rtol=1e-4)
        assert model.entry_states.reused_rows > 0


def test_engine_batch_mixing_every_form_equals_each_row_alone(fbase):
    engine = Engine(fbase)
    engine.registry.add_embedding("shallow", _prompt(fbase, 5, seed=5))
    for name, form_entry in (("deep", DEEP), ("late", LATE_VECTORS), ("late-kv", LATE_KV)):
        engine.registry.add_embedding(name, _form(fbase, form_entry, n=4, seed=7).require_prompt().frozen())
    texts = [*TEXTS, "one more row"]
    adapters = ["deep", None, "late", "shallow", "late-kv"][: len(texts)]
    texts = (texts * 2)[: len(adapters)]
    params = SamplingParams(max_new_tokens=6, stop_at_eos=False)
    batched = engine.generate(texts, adapters, params)
    for text, name, row in zip(texts, adapters, batched, strict=True):
        assert engine.generate([text], [name], params)[0].output_ids == row.output_ids


def test_peft_prefix_adapters_load_both_ways_with_equal_logits(fbase, family_dir, tmp_path):
    from peft import PrefixTuningConfig

    enc = _ids(fbase, ["the quick brown fox"])
    ours = _form(fbase, DEEP, n=5, seed=4)
    ours.save_pretrained(tmp_path / "ours")
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(family_dir), tmp_path / "ours").eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=enc.input_ids.cpu(), attention_mask=enc.attention_mask.cpu()).logits
        torch.testing.assert_close(ours(enc.input_ids, enc.attention_mask).cpu(), theirs, atol=1e-4, rtol=1e-4)
    config = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=6)
    made_by_peft = get_peft_model(AutoModelForCausalLM.from_pretrained(family_dir), config).eval()
    made_by_peft.save_pretrained(tmp_path / "peft")
    loaded = SoftPromptModel.from_pretrained(fbase, tmp_path / "peft")
    with torch.no_grad():
        theirs = made_by_peft(input_ids=enc.input_ids.cpu(), attention_mask=enc.attention_mask.cpu()).logits
        torch.testing.assert_close(loaded(enc.input_ids, enc.attention_mask).cpu(), theirs, atol=1e-4, rtol=1e-4)
