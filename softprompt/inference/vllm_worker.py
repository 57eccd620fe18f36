"""Runs inside the vLLM environment (``make vllm-env``), never imported by softprompt itself.

vLLM needs another transformers than softprompt, so it lives in a venv of its own and this file
is its only entry point: :mod:`softprompt.inference.vllm_bridge` writes a job (a JSON spec and a
safetensors file of ``prompt_embeds``), runs ``<vllm python> vllm_worker.py job.json out.json``
and reads the answer. Only vLLM, torch and the standard library are imported here.

Job: ``{"model", "dtype", "max_model_len", "max_tokens", "logprobs", "requests": [{"embeds": key}
| {"token_ids": [...]}, ...], "embeds_file"}``. Answer: per request the greedy token ids (an
end-of-sequence token dropped) and each position's top log-probabilities as ``[[id, lp], ...]``;
plus vLLM's version, start-up seconds and the seconds ``LLM.generate`` took for all requests.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main(job_path: str, out_path: str) -> None:
    from safetensors.torch import load_file
    from vllm import LLM, SamplingParams, __version__

    job = json.loads(open(job_path, encoding="utf-8").read())
    tensors = load_file(job["embeds_file"]) if job.get("embeds_file") else {}
    started = time.perf_counter()
    llm = LLM(
        model=job["model"],
        enable_prompt_embeds=True,
        dtype=job["dtype"],
        max_model_len=job["max_model_len"],
        seed=0,
    )
    startup = time.perf_counter() - started
    prompts = [
        {"prompt_embeds": tensors[r["embeds"]]} if "embeds" in r else {"prompt_token_ids": r["token_ids"]}
        for r in job["requests"]
    ]
    params = SamplingParams(temperature=0.0, max_tokens=job["max_tokens"], logprobs=job["logprobs"])
    llm.generate(prompts[:1], params, use_tqdm=False)  # warm-up, untimed
    started = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - started
    eos = llm.get_tokenizer().eos_token_id
    answers = []
    for output in outputs:
        completion = output.outputs[0]
        tokens = list(completion.token_ids)
        top = [[[int(t), float(lp.logprob)] for t, lp in position.items()] for position in completion.logprobs or []]
        if tokens and tokens[-1] == eos and completion.finish_reason == "stop":
            tokens = tokens[:-1]
        answers.append({"tokens": tokens, "top": top})
    result = {"version": __version__, "startup_seconds": startup, "seconds": seconds, "outputs": answers}
    tmp = out_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    os.replace(tmp, out_path)


if __name__ == "__main__":  # vLLM starts its engine with spawn: the work must sit behind this guard
    main(sys.argv[1], sys.argv[2])
