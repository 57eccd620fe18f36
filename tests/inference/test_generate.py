import dataclasses

import pytest
import torch

from softprompt.cli.args import config_from_args
from softprompt.cli.main import build_parser
from softprompt.core.decoder import lm_logits, run_decoder
from softprompt.core.errors import ConfigError
from softprompt.core.forms import Form, Prompt
from softprompt.core.inject import inject
from softprompt.inference.engine import Engine, Sampling, SamplingParams
from softprompt.inference.generate import GenerateConfig, complete, generate
from softprompt.inference.serve import ServeConfig
from softprompt.inference.serve.plan import Planner
from softprompt.inference.serve.schemas import CompletionRequest

TEXTS = ["hello there", "a", "the quick brown fox jumps"]


def _prompts(hidden):
    torch.manual_seed(1)
    p = torch.randn(5, hidden)
    return [Prompt(Form.VECTORS, p), None, Prompt(Form.VECTORS, p[:3])]


def reference_greedy(base, text, prompt, steps):
    """No cache at all: re-run the whole sequence for every new token."""
    emb = base.model.get_input_embeddings()
    ids = base.tokenizer([text], return_tensors="pt").input_ids.to(base.device)
    prompt = None if prompt is None else prompt.to(base.device)
    out = []
    for _ in range(steps):
        injected = inject(emb(ids), torch.ones_like(ids), [prompt])
        hidden, _ = run_decoder(base, injected.embeds, injected.attention_mask, injected.position_ids)
        token = int(lm_logits(base, hidden[:, -1]).argmax(-1))
        out.append(token)
        ids = torch.cat([ids, torch.tensor([[token]], device=base.device)], dim=1)
    return out


def test_cached_batched_greedy_equals_alone_and_no_cache_reference(tiny):
    config = GenerateConfig(max_new_tokens=10, stop_at_eos=False)
    prompts = _prompts(tiny.hidden_size)
    batched = complete(tiny, TEXTS, prompts, config)
    for text, prompt, row in zip(TEXTS, prompts, batched):
        assert complete(tiny, [text], [prompt], config)[0].token_ids == row.token_ids
        assert reference_greedy(tiny, text, None if prompt is None else prompt.weights, 10) == row.token_ids


def test_decode_steps_feed_one_token_each(llama, monkeypatch):
    """Prompt KV is computed once per prompt, prefill sees only real tokens, then one position per row."""
    seen = []
    original = llama.model.base_model.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["inputs_embeds"].shape[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(llama.model.base_model, "forward", spy)
    prompts = _prompts(32)
    complete(llama, TEXTS, prompts, GenerateConfig(max_new_tokens=6, stop_at_eos=False))
    assert seen == [5, 3, max(len(t) for t in TEXTS)] + [1] * 5


def test_output_has_no_virtual_tokens_and_counts_prompt_tokens(llama):
    prompt = Prompt(Form.VECTORS, torch.randn(7, 32))
    rows = complete(llama, ["abc"], [prompt], GenerateConfig(max_new_tokens=4, stop_at_eos=False))
    assert len(rows[0].token_ids) == 4 and rows[0].prompt_tokens == 3 and rows[0].finish_reason == "length"


def test_repetition_penalty_and_max_length_keep_batched_equal_to_alone(llama):
    config = GenerateConfig(max_length=12, repetition_penalty=1.5, stop_at_eos=False)
    prompts = _prompts(32)
    batched = generate(llama, TEXTS, prompts, config)
    assert batched == [generate(llama, [t], [p], config)[0] for t, p in zip(TEXTS, prompts)]
    assert [len(r.token_ids) for r in complete(llama, TEXTS, prompts, config)] == [12 - len(t) for t in TEXTS[:2]] + [1]


def test_sampling_is_reproducible_with_a_seed(llama):
    config = GenerateConfig(max_new_tokens=8, temperature=0.8, top_p=0.9, top_k=50, seed=3)
    assert generate(llama, TEXTS, [None] * 3, config) == generate(llama, TEXTS, [None] * 3, config)


def test_stop_string_cuts_output(llama):
    free = complete(llama, ["abc"], [None], GenerateConfig(max_new_tokens=8, stop_at_eos=False))[0]
    stop = free.text[2:4]
    cut = complete(llama, ["abc"], [None], GenerateConfig(max_new_tokens=8, stop_at_eos=False, stop=(stop,)))[0]
    assert cut.text == free.text[: free.text.find(stop)] and cut.finish_reason == "stop"


def test_eos_ends_a_row(llama):
    eos = llama.tokenizer.eos_token_id
    bias = torch.zeros(llama.model.config.vocab_size)
    bias[eos] = 1e4
    head = llama.model.get_output_embeddings()
    with torch.no_grad():
        original = head.bias
        head.bias = torch.nn.Parameter(bias)
        row = complete(llama, ["abc"], [None], GenerateConfig(max_new_tokens=5))[0]
        head.bias = original
    assert row.token_ids == [] and row.finish_reason == "stop"


def test_chat_template_wraps_the_prompt(llama):
    plain = generate(llama, ["<user>hi\n<assistant>"], [None], GenerateConfig(max_new_tokens=5, stop_at_eos=False))
    chat = generate(llama, ["hi"], [None], GenerateConfig(max_new_tokens=5, stop_at_eos=False, chat_template=True))
    assert chat == plain


@pytest.mark.parametrize(
    "bad,message",
    [
        (dict(max_new_tokens=0), "max_new_tokens must be between 1 and"),
        (dict(temperature=-0.5), "temperature must be >= 0"),
        (dict(temperature=float("nan")), "temperature must be a finite number"),
        (dict(top_p=1.5), "top_p must be in"),
        (dict(max_new_tokens=None), "set max_new_tokens or max_length"),
        (dict(stop=("",)), "stop strings must not be empty"),
        (dict(seed=1 << 64), "seed must be between"),
    ],
)
def test_invalid_generation_options_are_rejected(bad, message):
    with pytest.raises(ConfigError, match=message):
        GenerateConfig(**bad)


def test_inputs_start_with_the_tokenizers_bos_as_in_training(tmp_path):
    """A BOS-adding tokenizer (Llama, Gemma): generation feeds [prompt][BOS][text], as training and scoring do."""
    from softprompt.core.loading import load_base_model
    from tests.conftest import byte_tokenizer, save_tiny

    base = load_base_model(str(save_tiny("llama", tmp_path, tokenizer=byte_tokenizer(bos=True))), device="cpu")
    vectors = torch.randn(3, base.hidden_size)
    config = GenerateConfig(max_new_tokens=6, stop_at_eos=False)
    (row,) = complete(base, ["hello"], [Prompt(Form.VECTORS, vectors)], config)
    assert row.prompt_tokens == 1 + len("hello")
    assert reference_greedy(base, "hello", vectors, 6) == row.token_ids  # the reference tokenizes with the BOS


@pytest.mark.parametrize(
    "flags,knobs",
    [
        ([], {}),  # no --temperature: greedy, GenerateConfig's default
        (["--temperature", "0"], {"temperature": 0}),
        (["--temperature", "0.7", "--top-p", "0.9", "--seed", "5"], {"temperature": 0.7, "top_p": 0.9, "seed": 5}),
    ],
    ids=["default", "zero", "sampled"],
)
def test_cli_api_and_server_give_the_engine_the_same_sampling(llama, monkeypatch, flags, knobs):
    """One temperature convention (0: greedy) every way in: CLI flags, GenerateConfig and an OpenAI request
    reach the engine as the same sampling and give the same tokens."""
    argv = ["generate", "abc", "--max-new-tokens", "6", *flags]
    config = config_from_args(GenerateConfig, build_parser().parse_args(argv))
    assert config == GenerateConfig(max_new_tokens=6, **knobs)

    handed: list[SamplingParams] = []  # what each way in gives the engine
    make_request = Engine.make_request

    def spy(self, ids, adapter, params):
        handed.append(params)
        return make_request(self, ids, adapter, params)

    monkeypatch.setattr(Engine, "make_request", spy)
    (api,) = complete(llama, ["abc"], [None], config)
    engine = Engine(llama)
    # An OpenAI request without a temperature gets OpenAI's default, 1.0, so this one always names it.
    body = {"model": "tiny", "prompt": "abc", "max_tokens": 6, "temperature": 0, **knobs}
    job = Planner(engine, llama.tokenizer, ServeConfig(), "tiny").plan(CompletionRequest.model_validate(body))
    (served,) = engine.run([engine.submit(seq) for seq in job.seqs])

    assert _knobs(handed[0]) == _knobs(handed[1]) and handed[0].greedy == (config.temperature == 0)
    assert api.token_ids == served.output_ids
    greedy = complete(llama, ["abc"], [None], GenerateConfig(max_new_tokens=6))[0]
    assert (api.token_ids == greedy.token_ids) == handed[0].greedy  # this seed's draw leaves the greedy path


def _knobs(params: Sampling) -> dict:
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(Sampling)}
