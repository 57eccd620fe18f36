"""A frozen base model plus one soft prompt: forward, loss, save and load.

The base model is only ever called through :func:`run_decoder` with ``inputs_embeds``, so the
same code path serves training, scoring and generation, and the model's own ``generate`` is
never patched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from softprompt.core.adapter import AdapterConfig, load_adapter, save_adapter
from softprompt.core.errors import AdapterError, BaseModelMismatchError
from softprompt.core.inject import IGNORE_INDEX, Injected, inject, inject_labels
from softprompt.core.models import BaseModel, load_base_model
from softprompt.core.packed import packed_hidden, supports_packing
from softprompt.core.prompt import PEFT_INIT_NAMES, Init, PromptConfig, SoftPrompt, initial_embedding

log = logging.getLogger(__name__)

# Rows of the LM head computed at once when scoring; bounds the [rows, vocab] logits buffer.
LOSS_CHUNK = 2048
# Rows per chunk of the fused head + cross-entropy: a [512, vocab] fp32 buffer is 100 MB for a
# 49k vocabulary, and 512 rows keep the matmul efficient.
FUSED_CHUNK = 512
# How a training pass lays out the prompt and the rows: "packed" (padding-free, one sequence, see
# softprompt.core.packed), "shared" (prompt keys/values computed once and shared by padded rows) or
# "plain" (the prompt injected into every row, which the other two are tested against).
Layout = Literal["packed", "shared", "plain"]
# Padded tokens per forward/backward slice in training: bounds activation memory (~1.3 MB a token
# for SmolLM2-135M in fp32) while keeping matmuls large enough to run near the machine's peak.
MICRO_BATCH_TOKENS = 512


def run_decoder(
    base: BaseModel,
    embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: Any | None = None,
    use_cache: bool = False,
) -> tuple[torch.Tensor, Any]:
    """Run the decoder stack (no LM head) on embeddings [B, L, H]; returns hidden states and cache.

    With a cache, ``attention_mask`` covers the cached positions too and ``position_ids`` only
    the new ones, as transformers expects.
    """
    kwargs: dict[str, Any] = {"inputs_embeds": embeds, "attention_mask": attention_mask}
    if base.accepts_position_ids:
        kwargs["position_ids"] = position_ids
    out = base.model.base_model(**kwargs, cache=cache, use_cache=use_cache)
    return out.last_hidden_state, out.cache if use_cache else None


def lm_logits(base: BaseModel, hidden: torch.Tensor) -> torch.Tensor:
    """Apply the LM head (and final logit soft-capping, for models that have it)."""
    logits = base.model.get_output_embeddings()(hidden)
    cap = getattr(base.model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def token_nll(base: BaseModel, hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of the labelled next tokens, and how many there were.

    The LM head runs only on positions that predict a label, so the [B, L, vocab] logits
    tensor is never built: for short targets this is most of the compute saved.
    """
    targets = labels[:, 1:]  # position i predicts token i + 1
    keep = targets != IGNORE_INDEX
    selected = hidden[:, :-1][keep]  # [N, H]
    wanted = targets[keep]  # [N]
    head = base.model.get_output_embeddings()
    if _fusable_head(base, head):
        return LinearCrossEntropy.apply(selected, head.weight, wanted), int(wanted.numel())
    total = hidden.new_zeros(())
    for start in range(0, selected.shape[0], LOSS_CHUNK):
        logits = lm_logits(base, selected[start : start + LOSS_CHUNK]).float()
        total = total + F.cross_entropy(logits, wanted[start : start + LOSS_CHUNK], reduction="sum")
    return total, int(wanted.numel())


def _fusable_head(base: BaseModel, head: Any) -> bool:
    """A frozen bias-free linear head with no logit soft-capping: what LinearCrossEntropy computes."""
    return (
        isinstance(head, nn.Linear)
        and head.bias is None
        and not head.weight.requires_grad
        and not getattr(base.model.config, "final_logit_softcapping", None)
    )


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T`` with the gradient taken during the forward pass.

    hidden [N, H], frozen weight [V, H], targets [N]. Chunk by chunk, the logits become softmax
    minus one-hot in place and are multiplied back into d loss / d hidden [N, H], so no [N, V]
    buffer outlives its chunk and autograd stores only [N, H] (the idea of Liger's fused linear
    cross-entropy). The weight is frozen, so it gets no gradient.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        want_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(hidden) if want_grad else None
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], FUSED_CHUNK):
            rows = slice(start, start + FUSED_CHUNK)
            logits = (hidden[rows] @ weight.T).float()  # [n, V]
            target = targets[rows]
            picked = logits.gather(1, target[:, None])
            peak = logits.amax(dim=1, keepdim=True)
            # exp in place: the [n, V] buffer is read four times (max, sub, exp, sum), never copied
            norm = logits.sub_(peak).exp_().sum(dim=1, keepdim=True)  # [n, 1]
            total += (peak + norm.log() - picked).sum()
            if grad is not None:  # d/dh = softmax @ W - W[target]: the division folds into [n, H]
                grad[rows] = (logits.to(weight.dtype) @ weight).div_(norm.to(weight.dtype)) - weight[target]
        ctx.save_for_backward(grad)
        return total  # fp32 whatever the model dtype, like the plain path

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (grad,) = ctx.saved_tensors
        return (None if grad is None else (grad * grad_total).to(grad.dtype)), None, None


def shared_prefix_hidden(
    base: BaseModel, prompt: torch.Tensor, token_embeds: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Hidden states [B, 1 + T, H] of left-padded tokens after one soft prompt [P, H] shared by every row.

    Under causal attention the prompt's keys and values do not depend on the tokens after it, so
    they are computed once (batch 1) and expanded to the batch instead of B times. The rows are
    laid out as ``[prompt][padding][tokens]``: the mask hides the padding and position ids go on
    from P, so each row attends to exactly what it would in ``[padding][prompt][tokens]`` with the
    same positions. Gradients flow back through the expanded keys and values into the prompt.

    Column 0, and the padding column just before a row's first token, hold the prompt's last
    state, which predicts that first token; so ``hidden[:, :-1]`` predicts ``tokens`` exactly as
    in the injected layout, given labels shifted right by one (see :func:`shared_prefix_labels`).
    """
    batch, seq, _ = token_embeds.shape
    n_prompt = prompt.shape[0]
    ones = attention_mask.new_ones(1, n_prompt)
    positions = torch.arange(n_prompt, device=ones.device)[None]
    prefix, cache = run_decoder(base, prompt[None].to(token_embeds.dtype), ones, positions, use_cache=True)
    cache.batch_repeat_interleave(batch)  # [1, kv, P, d] -> [B, kv, P, d] per layer, differentiable
    mask = torch.cat([ones.expand(batch, -1), attention_mask], dim=1)  # [B, P + T]
    positions = (n_prompt + attention_mask.cumsum(dim=1) - 1) * attention_mask  # [B, T], 0 on padding
    hidden, _ = run_decoder(base, token_embeds, mask, positions, cache=cache, use_cache=True)
    last = prefix[:, -1:].expand(batch, 1, -1)  # [B, 1, H]
    hidden = torch.cat([last, hidden], dim=1)  # [B, 1 + T, H]
    first_predictor = (seq - attention_mask.sum(dim=1))[:, None]  # column before each row's first token
    at_predictor = torch.arange(seq + 1, device=hidden.device)[None, :] == first_predictor  # [B, 1 + T]
    return torch.where(at_predictor[..., None], last, hidden)


def shared_prefix_labels(labels: torch.Tensor) -> torch.Tensor:
    """[B, T] labels -> [B, 1 + T], aligned with :func:`shared_prefix_hidden`."""
    return torch.cat([labels.new_full((labels.shape[0], 1), IGNORE_INDEX), labels], dim=1)


def _slots(lengths: list[int], rows: list[int], packed: bool) -> int:
    """Token slots a slice of these rows computes: rows x longest row when padded, their sum when packed."""
    return sum(lengths[i] for i in rows) if packed else len(rows) * max(lengths[i] for i in rows)


def _row_slices(lengths: list[int], max_tokens: int, packed: bool = False) -> list[list[int]]:
    """Consecutive rows, longest first, grouped so a slice's token slots stay within ``max_tokens``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    slices: list[list[int]] = []
    for i in order:
        if slices and _slots(lengths, [*slices[-1], i], packed) <= max_tokens:
            slices[-1].append(i)
        else:
            slices.append([i])
    return slices


class SoftPromptModel(nn.Module):
    """The frozen base model and a trainable (or loaded) soft prompt."""

    def __init__(self, base: BaseModel, prompt: SoftPrompt | None = None, prompt_config: PromptConfig | None = None):
        super().__init__()
        self.base = base
        self.prompt = prompt
        self.prompt_config = prompt_config
        self.layout: Layout = "packed" if supports_packing(base) else "shared"

    @classmethod
    def from_pretrained(
        cls,
        base: str | BaseModel,
        adapter: str | Path | None = None,
        *,
        allow_base_mismatch: bool = False,
        **load_kwargs: Any,
    ) -> SoftPromptModel:
        """Load a base model (a reference or an already loaded one) and optionally an adapter."""
        base_model = load_base_model(base, **load_kwargs) if isinstance(base, str) else base
        if adapter is None:
            return cls(base_model)
        loaded = load_adapter(adapter)
        check_compatible(base_model, loaded.config, Path(adapter), allow_base_mismatch)
        return cls(base_model, SoftPrompt(loaded.embedding).to(base_model.device))

    @classmethod
    def with_new_prompt(cls, base: BaseModel, config: PromptConfig, seed: int = 0) -> SoftPromptModel:
        """A fresh, trainable prompt initialised as ``config`` says (same seed, same prompt)."""
        generator = torch.Generator().manual_seed(seed)
        embedding = initial_embedding(config, base.embedding_weight, base.tokenizer, generator)
        return cls(base, SoftPrompt(embedding).to(base.device), config)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Injected:
        token_embeds = self.base.model.get_input_embeddings()(input_ids)
        prompt = None if self.prompt is None else self.prompt()
        return inject(token_embeds, attention_mask, [prompt] * input_ids.shape[0])

    def loss(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, int]:
        """Summed next-token loss over labelled tokens, and their count."""
        if self.prompt is not None and self.layout == "packed":
            lengths = attention_mask.sum(dim=1).tolist()
            rows = [ids[ids.shape[0] - n :] for ids, n in zip(input_ids, lengths, strict=True)]
            targets = [row[row.shape[0] - n :] for row, n in zip(labels, lengths, strict=True)]
            return token_nll(self.base, *packed_hidden(self.base, self.prompt(), rows, targets))
        if self.prompt is not None and self.layout == "shared":
            token_embeds = self.base.model.get_input_embeddings()(input_ids)
            hidden = shared_prefix_hidden(self.base, self.prompt(), token_embeds, attention_mask)
            return token_nll(self.base, hidden, shared_prefix_labels(labels))
        injected = self.embed(input_ids, attention_mask)
        hidden, _ = run_decoder(self.base, injected.embeds, injected.attention_mask, injected.position_ids)
        return token_nll(self.base, hidden, inject_labels(labels, injected))

    def backward_mean_loss(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        scale: float = 1.0,
        max_tokens: int | None = None,
        divisor: int | None = None,
        passes: int = 0,
    ) -> tuple[float, int, int]:
        """Backpropagate ``scale`` x the batch's mean token loss; returns it, the token count and the slots run.

        The batch runs in slices of rows of at most ``max_tokens`` tokens each (padding counted
        unless the layout is packed), every padded slice trimmed to its own longest row, and each
        slice's summed loss is divided by the whole batch's count: the gradient equals one pass
        over the batch, while activation memory is bounded by the slice (about 1.3 MB per token
        for SmolLM2-135M). ``divisor`` replaces the batch's own token count (multi-process
        training divides by the global count).
        ``passes`` pads the work to that many forward/backward passes (see :meth:`keep_in_step`)
        and then every slice runs even after a non-finite loss, so no process leaves the others
        waiting; the caller sees the non-finite mean.
        """
        self.require_prompt()
        count = int((labels != IGNORE_INDEX).sum())  # every labelled token is scored after a prompt
        lengths = attention_mask.sum(dim=1).tolist()
        packed = self.layout == "packed"
        slices = _row_slices(lengths, max_tokens or MICRO_BATCH_TOKENS, packed)
        total, slots = 0.0, 0
        for rows in slices:
            width = max(lengths[i] for i in rows)
            index = torch.tensor(rows, device=input_ids.device)
            loss, _ = self.loss(input_ids[index, -width:], attention_mask[index, -width:], labels[index, -width:])
            if not torch.isfinite(loss) and not passes:
                return float(loss), count, slots
            (loss * (scale / max(divisor or count, 1))).backward()
            total += float(loss.detach())
            slots += _slots(lengths, rows, packed)
        self.keep_in_step(input_ids, attention_mask, labels, passes - len(slices))
        return total / max(count, 1), count, slots

    def count_passes(self, attention_mask: torch.Tensor, max_tokens: int | None = None) -> int:
        """Forward/backward passes :meth:`backward_mean_loss` runs for these rows (0 for none)."""
        lengths = attention_mask.sum(dim=1).tolist()
        return len(_row_slices(lengths, max_tokens or MICRO_BATCH_TOKENS, self.layout == "packed"))

    def keep_in_step(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, passes: int
    ) -> None:
        """Run ``passes`` zero-weighted passes over the shortest row (backward too while grads are on).

        Under ``--shard fsdp`` each decoder layer all-gathers its weights in every forward and
        backward, so a process with fewer rows than the others, or none, must still take part
        in as many passes or the others wait forever. The loss is multiplied by zero, so the
        prompt's gradient gains exact zeros and the result is that of the unpadded work.
        """
        if passes <= 0:
            return
        lengths = attention_mask.sum(dim=1)
        row = int(lengths.argmin())
        width = int(lengths[row])
        ids, mask, target = (t[row : row + 1, -width:] for t in (input_ids, attention_mask, labels))
        for _ in range(passes):
            loss, _ = self.loss(ids, mask, target)
            if torch.is_grad_enabled():
                (loss * 0.0).backward()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, vocab] for the real tokens only (virtual positions are dropped)."""
        injected = self.embed(input_ids, attention_mask)
        hidden, _ = run_decoder(self.base, injected.embeds, injected.attention_mask, injected.position_ids)
        return lm_logits(self.base, hidden[:, -input_ids.shape[1] :])

    def require_prompt(self) -> SoftPrompt:
        if self.prompt is None:
            raise AdapterError("this model has no soft prompt (load an adapter or train one first)")
        return self.prompt

    def adapter_config(self, metrics: dict[str, Any] | None = None) -> AdapterConfig:
        prompt = self.require_prompt()
        config = self.base.model.config
        init = self.prompt_config.init if self.prompt_config else Init.FILE
        return AdapterConfig(
            num_virtual_tokens=prompt.num_virtual_tokens,
            token_dim=self.base.hidden_size,
            num_layers=getattr(config, "num_hidden_layers", None),
            num_attention_heads=getattr(config, "num_attention_heads", None),
            prompt_tuning_init=PEFT_INIT_NAMES[init],
            prompt_tuning_init_text=self.prompt_config.init_text if init is Init.TEXT and self.prompt_config else None,
            tokenizer_name_or_path=self.base.name,
            base_model_name_or_path=self.base.name,
            softprompt_base_fingerprint=self.base.fingerprint,
            softprompt_tokenizer_fingerprint=self.base.tokenizer_fingerprint,
            softprompt_metrics=dict(metrics or {}),
        )

    def save_pretrained(self, directory: str | Path, metrics: dict[str, Any] | None = None) -> Path:
        return save_adapter(directory, self.require_prompt().embedding, self.adapter_config(metrics))

    def generate(self, texts: Sequence[str], config: Any = None) -> list[str]:
        """Generate continuations of ``texts`` with this model's prompt (see softprompt.inference.generate)."""
        from softprompt.inference.generate import GenerateConfig, generate

        prompt = None if self.prompt is None else self.prompt.embedding.detach()
        return generate(self.base, list(texts), [prompt] * len(texts), config or GenerateConfig())


def check_compatible(base: BaseModel, config: AdapterConfig, where: Path, allow_mismatch: bool) -> None:
    """Refuse an adapter trained for another base model; a fingerprint mismatch can be overridden."""
    if config.token_dim != base.hidden_size:
        raise BaseModelMismatchError(
            f"adapter {where} has token_dim {config.token_dim}, but base model {base.name!r} has hidden size "
            f"{base.hidden_size}: it was trained on a different model ({config.base_model_name_or_path})"
        )
    expected = config.softprompt_base_fingerprint
    if expected is None or expected == base.fingerprint:
        return
    message = (
        f"adapter {where} was trained on base model {config.base_model_name_or_path!r} "
        f"(fingerprint {expected}), but {base.name!r} has fingerprint {base.fingerprint}"
    )
    if not allow_mismatch:
        raise BaseModelMismatchError(message + "; pass --allow-base-mismatch to load it anyway")
    log.warning("%s; loading anyway as asked", message)
