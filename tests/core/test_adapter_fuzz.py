"""Property tests for adapter loading and saving: an adapter, or one AdapterError line; saves are atomic.

A loaded adapter is always usable: [num_virtual_tokens, token_dim] as its config says, float32,
finite. A failed save leaves the previous adapter byte for byte, and no temp files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from safetensors.torch import save as safetensors_bytes

from fuzz.properties import HOSTILE_JSON, fuzz_settings, json_dumps_or_none, safetensors_files
from fuzz.targets import SHAPE, expect_clean
from softprompt.core import adapter as adapter_module
from softprompt.core import files as files_module
from softprompt.core.adapter import CONFIG_NAME, WEIGHTS_NAME, AdapterConfig, load_adapter, save_adapter
from softprompt.core.errors import AdapterError, SoftPromptError
from softprompt.core.forms import Form, Prompt

GOOD_CONFIG = AdapterConfig(*SHAPE).to_json()

# -- weights ---------------------------------------------------------------------------------------


@fuzz_settings(60)
@given(data=st.binary(max_size=300))
@example(data=b"")
@example(data=b"\xff" * 8 + b"{}")  # a header length of 2**64 - 1
def test_any_bytes_as_weights(targets, data):
    targets.adapter_weights(data)


@fuzz_settings(60)
@given(data=safetensors_files())
def test_hand_built_safetensors_headers(targets, data):
    targets.adapter_weights(data)


@fuzz_settings(40)
@given(cut=st.integers(0, 10_000))
def test_truncated_weights_are_refused(targets, cut):
    full = safetensors_bytes({"prompt_embeddings": torch.ones(SHAPE)})
    cut %= len(full)
    targets.adapter_weights(full[:cut])
    with pytest.raises(AdapterError, match="safetensors"):
        load_adapter(targets.adapter_dir)


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2]
OTHER_DTYPES = [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64]


@fuzz_settings(80)
@given(
    dtype=st.sampled_from(DTYPES + OTHER_DTYPES),
    shape=st.sampled_from([SHAPE, (2,), (2, 4, 1), (4, 2), (0, 4), (2, 5), ()]),
    special=st.sampled_from([None, float("nan"), float("inf"), -float("inf"), 1e300, 1e5]),
    key=st.sampled_from(["prompt_embeddings", "prompt_embeddings", "prompt_embeddings.weight", "embedding"]),
    extra=st.booleans(),
)
@example(dtype=torch.float64, shape=SHAPE, special=1e300, key="prompt_embeddings", extra=False)
@example(dtype=torch.float8_e4m3fn, shape=SHAPE, special=None, key="prompt_embeddings", extra=False)
def test_weights_of_every_dtype_shape_and_value(targets, dtype, shape, special, key, extra):
    tensor = torch.ones(shape, dtype=torch.float64)
    if special is not None and tensor.numel():
        tensor.view(-1)[0] = special
    tensor = tensor.to(dtype)
    tensors = {key: tensor, **({"extra": torch.zeros(3, 3)} if extra else {})}
    targets.adapter_weights(safetensors_bytes(tensors))
    loaded = expect_clean(lambda: load_adapter(targets.adapter_dir))
    usable = (
        key == "prompt_embeddings"
        and dtype in DTYPES
        and shape == SHAPE
        and bool(torch.isfinite(tensor.float()).all())  # as float32: a float64 1e300 is inf
    )
    assert isinstance(loaded, SoftPromptError) != usable, loaded


# -- config ----------------------------------------------------------------------------------------


@fuzz_settings(60)
@given(data=st.binary(max_size=300))
def test_any_bytes_as_config(targets, data):
    targets.adapter_config(data)


@fuzz_settings(100)
@given(overrides=st.dictionaries(st.sampled_from(sorted(GOOD_CONFIG)), HOSTILE_JSON, max_size=4))
@example(overrides={"num_virtual_tokens": 10**5000})
@example(overrides={"softprompt_base_fingerprint": {"nested": ["x"]}})
def test_config_with_hostile_values(targets, overrides):
    text = json_dumps_or_none({**GOOD_CONFIG, **overrides})
    if text is None:  # json.dumps refuses 5000-digit ints: write the file by hand
        text = json.dumps({**GOOD_CONFIG, **{k: 0 for k in overrides}}).replace(": 0", ": -" + "9" * 5000, 1)
    targets.adapter_config(text.encode())
    loaded = expect_clean(lambda: load_adapter(targets.adapter_dir))
    if not isinstance(loaded, SoftPromptError):
        config = loaded.config
        assert (config.num_virtual_tokens, config.token_dim) == SHAPE
        for name in ("base_model_name_or_path", "softprompt_base_fingerprint", "softprompt_tokenizer_fingerprint"):
            assert getattr(config, name) is None or isinstance(getattr(config, name), str)


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        "null",
        '"PROMPT_TUNING"',
        "1e999",
        "[" * 100_000,
        '{"a": ' * 100_000,
        "{" + '"peft_type": "PROMPT_TUNING", ' * 3 + '"num_virtual_tokens": 2, "token_dim": 4}',
        '{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 2, "token_dim": 4, "x": "' + "y" * (1 << 20) + '"}',
        "\ufeff{}",
    ],
    ids=["list", "null", "string", "inf", "deep-list", "deep-object", "duplicate-keys", "huge", "bom"],
)
def test_non_object_deep_and_huge_configs(targets, text):
    targets.adapter_config(text.encode("utf-8", "surrogatepass"))


def test_missing_files_and_pickles_are_refused(tmp_path):
    with pytest.raises(AdapterError, match="not found"):
        load_adapter(tmp_path / "absent")
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")  # a pickle: never loaded
    with pytest.raises(AdapterError, match="pickle files are never loaded"):
        load_adapter(tmp_path)
    (tmp_path / WEIGHTS_NAME).write_bytes(safetensors_bytes({"prompt_embeddings": torch.ones(SHAPE)}))
    with pytest.raises(AdapterError, match="missing"):
        load_adapter(tmp_path)


# -- atomic saves ----------------------------------------------------------------------------------


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _fail_weights(tensors, filename, metadata=None):
    Path(filename).write_bytes(b"partial")  # half a file, then the disk fills up
    raise OSError(28, "No space left on device")


def _fail_config(self, *args, **kwargs):
    raise OSError(28, "No space left on device")


def _fail_fsync(fd):
    raise OSError(5, "Input/output error")


class _Interrupt(BaseException):
    """Stands in for KeyboardInterrupt without upsetting pytest."""


def _interrupt_weights(tensors, filename, metadata=None):
    Path(filename).write_bytes(b"partial")
    raise _Interrupt


@pytest.mark.parametrize(
    "where, patch",
    [
        ("weights", lambda mp: mp.setattr(adapter_module, "save_file", _fail_weights)),
        ("config", lambda mp: mp.setattr(Path, "write_text", _fail_config)),
        ("fsync", lambda mp: mp.setattr(files_module.os, "fsync", _fail_fsync)),
        ("interrupt", lambda mp: mp.setattr(adapter_module, "save_file", _interrupt_weights)),
    ],
)
def test_failed_save_keeps_the_old_adapter(tmp_path, monkeypatch, where, patch):
    old = torch.randn(3, 4)
    save_adapter(tmp_path, Prompt(Form.VECTORS, old), AdapterConfig(3, 4))
    before = _snapshot(tmp_path)
    new = Prompt(Form.VECTORS, torch.randn(5, 4))
    patch(monkeypatch)
    with pytest.raises((AdapterError, _Interrupt)) as raised:
        save_adapter(tmp_path, new, AdapterConfig(5, 4, softprompt_metrics={"loss": 1.0}))
    if raised.type is AdapterError:
        message = str(raised.value)
        assert len(message.splitlines()) == 1 and str(tmp_path) in message
        assert ("Input/output" if where == "fsync" else "No space") in message
    monkeypatch.undo()
    assert _snapshot(tmp_path) == before  # same files, same bytes: no temp files left either
    assert torch.equal(load_adapter(tmp_path).embedding, old)


@fuzz_settings(20)
@given(rows=st.integers(1, 6), dim=st.integers(1, 6), metrics=st.dictionaries(st.text(max_size=5), HOSTILE_JSON))
def test_save_then_load_round_trips(fuzz_dir, rows, dim, metrics):
    directory = fuzz_dir / "round-trip"
    embedding = torch.randn(rows, dim)
    text = json_dumps_or_none(metrics)
    config = AdapterConfig(rows, dim, softprompt_metrics=metrics if text is not None else {})
    save_adapter(directory, Prompt(Form.VECTORS, embedding), config)
    assert torch.equal(load_adapter(directory).embedding, embedding)
    assert sorted(p.name for p in directory.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME])
