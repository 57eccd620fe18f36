"""Fuzz targets: arbitrary bytes in, through one of softprompt's input-handling entry points.

The contract every target checks (issue 6): each input gives either a result or a
:class:`SoftPromptError` whose message is one line. Any other exception escapes the target and
is a bug. The same targets serve ``fuzz/run.py`` (atheris or the built-in mutator) and the
property tests, so a crash found by one can be replayed by the other.

Byte layout: ``data[0]`` picks the target (modulo the number of targets), the rest is its input.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import save as safetensors_bytes
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from softprompt.core.adapter import CONFIG_NAME, WEIGHTS_NAME, AdapterConfig, load_adapter
from softprompt.core.data import DataConfig, load_examples, tokenize_row
from softprompt.core.errors import SoftPromptError
from softprompt.core.forms import Form, Prompt
from softprompt.core.frozen import FrozenModel
from softprompt.core.prompt import Init, PromptConfig, initial_embedding
from softprompt.inference.generate import GenerateConfig, complete

T = TypeVar("T")
SHAPE = (2, 4)  # the prompt shape the fixed adapter config promises
EOS = "<|endoftext|>"


def expect_clean(call: Callable[[], T]) -> T | SoftPromptError:
    """Run ``call``; a SoftPromptError is an accepted outcome if its message is one line."""
    try:
        return call()
    except SoftPromptError as exc:
        message = str(exc)
        if not message.strip() or len(message.splitlines()) != 1:
            raise AssertionError(f"{type(exc).__name__} message is not one line: {message!r}") from exc
        return exc


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level, no merges: any text round-trips (as tests/conftest.py builds it)."""
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab[EOS] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS, pad_token=EOS)


def tiny_model(seed: int = 0) -> FrozenModel:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=258,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=256,
        bos_token_id=256,
        pad_token_id=256,
    )
    tokenizer = byte_tokenizer()
    tokenizer.padding_side = "left"  # as load_base_model sets it
    return FrozenModel(AutoModelForCausalLM.from_config(config).eval(), tokenizer, "tiny-llama")


class Targets:
    """Holds the shared tokenizer, tiny model and scratch directory the targets write into."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.tokenizer = byte_tokenizer()
        self.base: FrozenModel | None = None  # built on first use: only the config target needs it
        self.adapter_dir = work / "adapter"
        self.good_config = json.dumps(AdapterConfig(*SHAPE).to_json()).encode()
        self.good_weights = safetensors_bytes({"prompt_embeddings": torch.ones(SHAPE)})
        self.all: list[Callable[[bytes], None]] = [
            self.csv_file,
            self.jsonl_file,
            self.template,
            self.adapter_weights,
            self.adapter_config,
            self.config_json,
        ]

    def dispatch(self, data: bytes) -> None:
        if data:
            self.all[data[0] % len(self.all)](data[1:])

    # -- datasets ---------------------------------------------------------------------------

    def csv_file(self, data: bytes) -> None:
        self._data_file(data, ".csv")

    def jsonl_file(self, data: bytes) -> None:
        self._data_file(data, ".jsonl")

    def _data_file(self, data: bytes, suffix: str) -> None:
        path = self.work / f"rows{suffix}"
        path.write_bytes(data)
        columns = _first_columns(data, suffix)
        configs: list[dict[str, Any]] = [{"text_column": columns[0]}]
        if len(columns) > 1:
            configs.append({"template": "Input: {" + columns[0] + "} Output:", "target_column": columns[-1]})
        for options in configs:
            config = expect_clean(lambda o=options: DataConfig(data=str(path), max_length=64, **o))
            if isinstance(config, DataConfig):
                expect_clean(lambda c=config: load_examples(c, self.tokenizer))

    def template(self, data: bytes) -> None:
        """Template and one row's text, separated by a NUL byte."""
        template, _, text = data.decode("utf-8", "replace").partition("\x00")
        row = {"text": text, "label": "yes", "a.b": "x", "0": "y", "": "z", "text[0]": "w"}
        config = expect_clean(lambda: DataConfig(template=template, target_column="label", max_length=64))
        if isinstance(config, DataConfig):
            expect_clean(lambda: tokenize_row(row, config, self.tokenizer, "fuzz row"))

    # -- adapters ---------------------------------------------------------------------------

    def adapter_weights(self, data: bytes) -> None:
        self._adapter(weights=data, config=self.good_config)

    def adapter_config(self, data: bytes) -> None:
        self._adapter(weights=self.good_weights, config=data)

    def _adapter(self, weights: bytes, config: bytes) -> None:
        shutil.rmtree(self.adapter_dir, ignore_errors=True)
        self.adapter_dir.mkdir()
        (self.adapter_dir / WEIGHTS_NAME).write_bytes(weights)
        (self.adapter_dir / CONFIG_NAME).write_bytes(config)
        loaded = expect_clean(lambda: load_adapter(self.adapter_dir))
        if not isinstance(loaded, SoftPromptError):
            assert tuple(loaded.embedding.shape) == (loaded.config.num_virtual_tokens, loaded.config.token_dim)
            assert loaded.embedding.dtype == torch.float32 and bool(torch.isfinite(loaded.embedding).all())

    # -- configs and requests ---------------------------------------------------------------

    def config_json(self, data: bytes) -> None:
        """A JSON object as a request body: its keys fill each config; a generate config is run."""
        try:
            body = json.loads(data)
        except (ValueError, RecursionError):
            return  # the JSON parser's own errors are not softprompt's input handling
        if not isinstance(body, dict):
            return
        for cls in (DataConfig, PromptConfig, GenerateConfig):
            known = {k: v for k, v in body.items() if k in cls.__dataclass_fields__}
            config = expect_clean(lambda c=cls, k=known: c(**k))  # type: ignore[misc]
            if isinstance(config, GenerateConfig):
                self._generate(config, body.get("prompts", ["hello"]))
            elif isinstance(config, PromptConfig):
                self._init_prompt(config)

    def _init_prompt(self, config: PromptConfig) -> None:
        if config.num_virtual_tokens > 64 or config.init is Init.FILE:
            return  # bound the work; init=file is the adapter targets' business
        base = self._base()
        generator = torch.Generator().manual_seed(0)
        expect_clean(lambda: initial_embedding(config, base, generator))

    def _generate(self, config: GenerateConfig, texts: Any) -> None:
        if not isinstance(texts, list) or len(texts) > 4:
            return
        # Bound the work per input; hostile token counts were already checked by GenerateConfig.
        bounded = replace(config, max_new_tokens=min(config.max_new_tokens or 3, 3))
        base = self._base()
        prompts = [Prompt(Form.VECTORS, torch.randn(3, 32)) if i % 2 else None for i in range(len(texts))]
        expect_clean(lambda: complete(base, texts, prompts, bounded))

    def _base(self) -> FrozenModel:
        if self.base is None:
            self.base = tiny_model()
        return self.base


def _first_columns(data: bytes, suffix: str) -> list[str]:
    """Column names the data itself suggests, so configs reach tokenizing and not just 'no column'."""
    text = data.decode("utf-8", "replace").lstrip("\ufeff")
    try:
        if suffix == ".csv":
            header = next(csv.reader(io.StringIO(text, newline="")), [])
        else:
            first = json.loads(text.split("\n", 1)[0])
            header = list(first) if isinstance(first, dict) else []
    except (csv.Error, ValueError, RecursionError):
        header = []
    return [h for h in header if isinstance(h, str)][:3] or ["prompt"]


def seeds(targets: Targets) -> list[bytes]:
    """Valid and nearly valid inputs for each target, for the mutator to start from."""
    index = {fn.__name__: bytes([i]) for i, fn in enumerate(targets.all)}
    ones = torch.ones(SHAPE)
    header_only = safetensors_bytes({"prompt_embeddings": ones})[:64]
    config = json.loads(targets.good_config)
    return [
        index["csv_file"] + b'prompt,act\nYou are a pirate,Pirate\n"quoted, with comma",x\n',
        index["csv_file"] + b"\xef\xbb\xbftext,label\nhello,yes\n,no\n1,2,3\n",
        index["jsonl_file"] + b'{"prompt": "hi there", "act": "Greeter"}\n{"prompt": 3, "act": null}\n',
        index["jsonl_file"] + b'{"text": "a", "label": "b"}\n\n[1, 2]\n{"text": {"x": 1}}\n',
        index["template"] + b"Tweet: {text} Label:\x00I love it",
        index["template"] + b"{text.__class__} {0} {} {text!r:>5} {{literal}}\x00x",
        index["adapter_weights"] + targets.good_weights,
        index["adapter_weights"] + safetensors_bytes({"prompt_embeddings": ones.to(torch.bfloat16), "extra": ones}),
        index["adapter_weights"] + safetensors_bytes({"prompt_embeddings": ones.double() * 1e300}),
        index["adapter_weights"] + header_only,
        index["adapter_config"] + targets.good_config,
        index["adapter_config"] + json.dumps({**config, "num_virtual_tokens": "2", "token_dim": -4}).encode(),
        index["config_json"] + b'{"max_new_tokens": 2, "temperature": 1e-300, "seed": 7}',
        index["config_json"] + b'{"init": "vocab", "num_virtual_tokens": 4, "template": "{a}", "target_column": "b"}',
        index["config_json"] + b'{"prompts": ["hi", ""], "stop": ["x"], "top_p": 0.5, "top_k": 1e400}',
    ]
