"""The adapter format is PEFT's: each side loads the other's files and computes the same logits."""

import torch
from peft import PeftModel, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from transformers import AutoModelForCausalLM

from softprompt.core.adapter import load_adapter
from softprompt.core.prompt import PromptConfig
from softprompt.core.prompted import SoftPromptModel


def _ids(base):
    return base.tokenizer(["the quick brown fox"], return_tensors="pt")


def test_softprompt_adapter_loads_in_peft_with_same_logits(tiny, tiny_dirs, arch, tmp_path):
    ours = SoftPromptModel.with_new_prompt(tiny, PromptConfig(num_virtual_tokens=5, init="random"), seed=3)
    ours.save_pretrained(tmp_path / "adapter")
    plain = AutoModelForCausalLM.from_pretrained(tiny_dirs[arch])
    peft_model = PeftModel.from_pretrained(plain, tmp_path / "adapter").eval()
    enc = _ids(tiny)
    with torch.no_grad():
        theirs = peft_model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits[:, 5:]
        mine = ours(enc.input_ids, enc.attention_mask)
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)


def test_peft_adapter_loads_in_softprompt_with_same_logits(tiny, tiny_dirs, arch, tmp_path):
    plain = AutoModelForCausalLM.from_pretrained(tiny_dirs[arch])
    config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=6, prompt_tuning_init=PromptTuningInit.RANDOM
    )
    peft_model = get_peft_model(plain, config)
    peft_model.save_pretrained(tmp_path / "peft")
    assert load_adapter(tmp_path / "peft").embedding.shape == (6, 32)
    ours = SoftPromptModel.from_pretrained(tiny, tmp_path / "peft")
    enc = _ids(tiny)
    peft_model.eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits[:, 6:]
        mine = ours(enc.input_ids, enc.attention_mask)
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)
