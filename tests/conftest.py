"""Tiny random models built in-process: every architecture family in seconds, no downloads."""

from __future__ import annotations

import os

# Tests never touch the network: hub lookups fail at once instead of retrying.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoModelForCausalLM,
    BloomConfig,
    GPT2Config,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from fuzz.targets import Targets
from softprompt.core.frozen import FrozenModel
from softprompt.core.loading import load_base_model

ARCHS = ["llama", "gpt2", "bloom", "qwen2"]
EOS = "<|endoftext|>"


def byte_tokenizer(bos: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges: any text round-trips, vocab 257.

    ``bos``: it puts a BOS (the end-of-text token) before every text by default, as Llama's and
    Gemma's tokenizers do.
    """
    byte_map = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_map))}
    vocab[EOS] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    if bos:
        core.post_processor = processors.TemplateProcessing(
            single=f"{EOS} $A", pair=f"{EOS} $A $B", special_tokens=[(EOS, vocab[EOS])]
        )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS, pad_token=EOS)
    if bos:
        tokenizer.bos_token = EOS
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"
    return tokenizer


@contextmanager
def single_thread() -> Iterator[None]:
    """One torch thread for the block, as torchrun's child processes run: same floating-point order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def interrupt_backward(monkeypatch: pytest.MonkeyPatch, at: int) -> Callable[[], None]:
    """Ctrl-C during the ``at``-th batch's backward pass, as a user presses it mid-run; returns the undo."""
    import softprompt.training.driver as driver

    original, calls = driver._backward, []

    def interrupt(loops, batches):
        calls.append(1)
        if len(calls) == at:
            raise KeyboardInterrupt
        return original(loops, batches)

    monkeypatch.setattr(driver, "_backward", interrupt)
    return lambda: monkeypatch.setattr(driver, "_backward", original)


def tiny_config(arch: str):
    common = dict(vocab_size=258, eos_token_id=256, bos_token_id=256, pad_token_id=256)
    rope = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    if arch in ("llama", "qwen2"):
        return {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch](**rope, **common)
    if arch == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=512, **common)
    if arch == "bloom":
        return BloomConfig(hidden_size=32, n_layer=2, n_head=4, **common)
    raise ValueError(arch)


def save_tiny(
    arch: str,
    directory: Path,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerFast | None = None,
    exact_vocab: bool = False,
) -> Path:
    """``exact_vocab``: as many embedding rows as the tokenizer has tokens (the default config has a spare one)."""
    tokenizer = tokenizer or byte_tokenizer()
    config = tiny_config(arch)
    if exact_vocab:
        config.vocab_size = len(tokenizer)
    return save_random(config, directory, seed, tokenizer)


def save_random(config, directory: Path, seed: int = 0, tokenizer: PreTrainedTokenizerFast | None = None) -> Path:
    """A random model of ``config`` saved with a tokenizer (default: the byte tokenizer)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    # Larger weights than the default init so logits are far from uniform and argmax is stable.
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.normal_(0, 0.3)
    model.save_pretrained(directory)
    (tokenizer or byte_tokenizer()).save_pretrained(directory)
    return directory


ROW_TEXTS = ["hi", "a much longer input row of text", "mid size row", "x"]


def row_examples(tokenizer, supervised: bool) -> list:
    """Rows of different lengths: every token labelled, or (supervised) only the last one."""
    from softprompt.core.data import Example
    from softprompt.core.inject import IGNORE_INDEX

    out = []
    for text in ROW_TEXTS:
        ids = tokenizer(text)["input_ids"]
        labels = [IGNORE_INDEX] * (len(ids) - 1) + ids[-1:] if supervised else list(ids)
        out.append(Example(ids, labels))
    return out


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: save_tiny(arch, root / arch) for arch in ARCHS}


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


def load_tiny(tiny_dirs: dict[str, Path], arch: str, dtype: torch.dtype = torch.float32) -> FrozenModel:
    return load_base_model(str(tiny_dirs[arch]), dtype=dtype, device="cpu")


@pytest.fixture
def tiny(tiny_dirs, arch) -> FrozenModel:
    """A tiny model of each architecture; its large random weights keep greedy argmax away from ties.

    float32, not float64: bloom's eager attention casts a float64 mask minimum to -inf in fp32.
    """
    return load_tiny(tiny_dirs, arch)


@pytest.fixture
def llama(tiny_dirs) -> FrozenModel:
    return load_tiny(tiny_dirs, "llama")


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    """Scratch space for a module's property tests (hypothesis forbids function-scoped tmp_path)."""
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def targets(fuzz_dir) -> Targets:
    return Targets(fuzz_dir)
