"""How a training or scoring pass lays out soft prompts and a batch of rows. Same loss, any layout.

- ``plain``: the prompt injected into every left-padded row (:func:`softprompt.core.inject.inject`);
  the reference the others are tested against, and exact for every family. Vectors only: a
  ``kv`` prompt has no slots to inject, and takes the shared layout.
- ``shared``: the prompt's keys/values in every layer computed once and attended to by every row.
- ``packed``: the prompt and the rows in one padding-free sequence (:mod:`softprompt.core.packed`).

A pass may carry several prompts, each row attending to its own (``owners``): that is how a
sweep's candidates train in the same passes over the frozen model (:func:`softprompt.training.train.train_sweep`).
Every layout gives each row exactly what it sees in a pass of its prompt alone, and returns, per
prompt, hidden states and labels aligned for :func:`softprompt.core.loss.token_nll`.

Late prompts (entry layer k > 0, :mod:`softprompt.core.forms`) run every layer, unless the caller
gives ``entry_states``: the rows' states entering layer k, which do not depend on the prompt's
weights. Then only layers k .. L-1 run, which is the point of a late prompt. All prompts of one
pass enter at the same layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from softprompt.core.decoder import embed_tokens, prompt_cache, run_after_prefix, run_decoder
from softprompt.core.errors import ConfigError
from softprompt.core.forms import Form, Prompt
from softprompt.core.frozen import FrozenModel
from softprompt.core.inject import IGNORE_INDEX, Injected, inject, inject_labels
from softprompt.core.packed import packed_hidden

Layout = Literal["packed", "shared", "plain"]
Piece = tuple[torch.Tensor, torch.Tensor]  # hidden [B', L, H] and labels [B', L], as token_nll takes them


def choose_layout(base: FrozenModel, n_prompt: int, width: int, form: Form = Form.VECTORS) -> Layout:
    """The fastest exact layout for a prompt of ``n_prompt`` tokens before rows up to ``width`` long.

    Under a sliding window, ``shared`` stays exact only while the prompt and the longest row fit
    in the window (a short row's queries would otherwise lose sight of the prompt across padding);
    ``plain`` keeps each row contiguous and is exact at any length. With several prompts,
    ``n_prompt`` is the longest. A ``kv`` prompt has no plain layout: past the window it is refused.
    """
    family = base.family
    if family.packable:
        return "packed"
    span = family.max_span
    if span is None or n_prompt + width <= span:
        return "shared"
    if form is Form.KV:
        raise ConfigError(
            f"a kv prompt of {n_prompt} tokens before rows of {width} does not fit {family.model_type}'s sliding "
            f"window ({family.window} tokens): use shorter rows (--max-length) or a vectors prompt"
        )
    return "plain"


def layout_hidden(
    base: FrozenModel,
    prompt: Prompt,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    layout: Layout,
    entry_states: torch.Tensor | None = None,
) -> Piece:
    """Hidden states [B', L, H] and labels [B', L] of left-padded rows after ``prompt``."""
    owners = [0] * input_ids.shape[0]
    piece = layout_pieces(base, [prompt], owners, input_ids, attention_mask, labels, layout, entry_states)[0]
    assert piece is not None  # every row belongs to the one prompt
    return piece


def layout_pieces(
    base: FrozenModel,
    values: Sequence[Prompt],
    owners: list[int],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    layout: Layout,
    entry_states: torch.Tensor | None = None,
) -> list[Piece | None]:
    """Per prompt k: hidden states and labels of the rows with ``owners[row] == k`` (None if none).

    Rows are grouped by owner first (a stable sort), so each prompt's rows form one contiguous
    piece of the pass; every row attends to its own prompt only. ``entry_states`` [B, T, H]: the
    rows' states entering the prompts' (common) entry layer, left-padded like ``input_ids``.
    """
    values = list(values)
    entry = _common_entry(values, entry_states)
    order = sorted(range(len(owners)), key=lambda row: owners[row])
    if order != list(range(len(owners))):
        index = torch.tensor(order, device=input_ids.device)
        input_ids, attention_mask, labels = (t.index_select(0, index) for t in (input_ids, attention_mask, labels))
        entry_states = None if entry_states is None else entry_states.index_select(0, index)
        owners = [owners[row] for row in order]
    labels = _unpredicted_first_tokens(values, owners, attention_mask, labels)
    counts = [owners.count(k) for k in range(len(values))]
    if layout == "plain" and any(p.form is Form.KV for p in values):
        layout = "shared"  # keys and values have no slots to inject: each row gets its own copy of them
    if layout == "packed":
        lengths = attention_mask.sum(dim=1).tolist()
        rows = [ids[ids.shape[0] - n :] for ids, n in zip(input_ids, lengths, strict=True)]
        targets = [row[row.shape[0] - n :] for row, n in zip(labels, lengths, strict=True)]
        states = None if entry_states is None else [s[s.shape[0] - n :] for s, n in zip(entry_states, lengths)]
        hidden, flat = packed_hidden(base, values, owners, rows, targets, states)
        spans, start = [], 0
        for count in counts:  # row r takes 1 + its length positions (see packed_hidden)
            spans.append(sum(1 + n for n in lengths[start : start + count]))
            start += count
        return _split(hidden, flat, spans, dim=1)
    token_states = embed_tokens(base, input_ids) if entry_states is None else entry_states
    start_layer = 0 if entry_states is None else entry
    if layout == "shared":
        hidden = shared_prefix_hidden(base, values, owners, token_states, attention_mask, start_layer)
        return _split(hidden, shared_prefix_labels(labels), counts, dim=0)
    hidden, injected = _injected(base, token_states, attention_mask, [values[o] for o in owners], start_layer)
    return _split(hidden, inject_labels(labels, injected), counts, dim=0)


def _common_entry(values: list[Prompt], entry_states: torch.Tensor | None) -> int:
    entries = {p.entry for p in values}
    if len(entries) != 1:
        raise ConfigError(f"prompts entering at different layers {sorted(entries)} cannot share a pass")
    entry = entries.pop()
    if entry_states is not None and entry == 0:
        raise ConfigError("entry_states are the frozen layers' output below a late prompt; this prompt enters at 0")
    return entry


def _unpredicted_first_tokens(
    values: list[Prompt], owners: list[int], attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """A ``kv`` prompt has no states of its own, so nothing predicts a row's first token: its label is dropped."""
    rows = [row for row, owner in enumerate(owners) if values[owner].form is Form.KV]
    if not rows:
        return labels
    first = labels.shape[1] - attention_mask.sum(dim=1)  # column of each row's first token
    index = torch.tensor(rows, device=labels.device)
    labels = labels.clone()
    labels[index, first[index]] = IGNORE_INDEX
    return labels


def _split(hidden: torch.Tensor, labels: torch.Tensor, sizes: list[int], dim: int) -> list[Piece | None]:
    if len(sizes) == 1:
        return [(hidden, labels)]
    pieces = zip(hidden.split(sizes, dim=dim), labels.split(sizes, dim=dim), strict=True)
    return [piece if size else None for piece, size in zip(pieces, sizes, strict=True)]


def injected_hidden(
    base: FrozenModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompts: Sequence[Prompt | None],
) -> tuple[torch.Tensor, Injected]:
    """The plain layout: each row's vectors prompt (or none) injected after its padding; hidden [B, L, H] and the layout."""
    return _injected(base, embed_tokens(base, input_ids), attention_mask, list(prompts), 0)


def _injected(
    base: FrozenModel, token_states: torch.Tensor, attention_mask: torch.Tensor, values: list[Prompt | None], start: int
) -> tuple[torch.Tensor, Injected]:
    """Inject each row's vectors at the layer ``start`` its states enter; a late prompt's below the entry.

    From layer 0 a late prompt's slots hold its frozen ``below`` inputs, and its vectors replace
    their states where they enter; from its entry layer (``start``) the vectors are injected as they are.
    """
    entry = max((p.entry for p in values if p is not None), default=0)
    late = entry > start
    injected = inject(token_states, attention_mask, [None if p is None else _slots(p, late) for p in values])
    edit = None
    if late:
        vectors = inject(
            torch.zeros_like(token_states), attention_mask, [None if p is None else p.weights for p in values]
        )
        in_prompt = ((injected.source >= injected.num_tokens) & injected.attention_mask.bool())[..., None]  # [B, L, 1]
        edit = (entry, lambda states: torch.where(in_prompt, vectors.embeds.to(states.dtype), states))
    hidden, _ = run_decoder(
        base, injected.embeds, injected.attention_mask, injected.position_ids, start=start, edit=edit
    )
    return hidden, injected


def _slots(prompt: Prompt, below: bool) -> torch.Tensor:
    if prompt.form is not Form.VECTORS:
        raise ConfigError("only vectors can be injected as prompt slots; a kv prompt takes the shared layout")
    return prompt.below if below and prompt.below is not None else prompt.weights


def shared_prefix_hidden(
    base: FrozenModel,
    prompts: Sequence[Prompt],
    owners: list[int],
    token_states: torch.Tensor,
    attention_mask: torch.Tensor,
    start: int = 0,
) -> torch.Tensor:
    """Hidden states [B, 1 + T, H] of left-padded tokens, row b after prompt ``owners[b]``.

    The prompts' keys/values run once, side by side (zero-padded on the right to the longest);
    each row takes its owner's and gradients flow back through them into that prompt. Rows are
    laid out as ``[prompt][padding][tokens]`` (a shorter prompt's padding slots masked), which
    :func:`run_after_prefix` makes equivalent to ``[padding][prompt][tokens]``. ``token_states``
    enter layer ``start``: token embeddings, or the frozen layers' output below a late prompt.

    Column 0, and the padding column just before a row's first token, hold the prompt's last
    state, which predicts that first token; so ``hidden[:, :-1]`` predicts ``tokens`` exactly as
    in the injected layout, given labels shifted right by one (see :func:`shared_prefix_labels`).
    """
    batch, seq, _ = token_states.shape
    device = token_states.device
    prefix = prompt_cache(base, prompts)
    sizes = torch.tensor(prefix.lengths, device=device)
    owner = torch.tensor(owners, device=device)
    prefix.cache.batch_select_indices(owner)  # [K, kv, P, d] -> [B, kv, P, d] per layer, differentiable
    prefix_mask = (torch.arange(prefix.length, device=device)[None, :] < sizes[owner][:, None]).long()  # [B, Pmax]
    hidden, _ = run_after_prefix(base, prefix.cache, prefix_mask, token_states, attention_mask, start=start)
    last = prefix.last[owner][:, None]  # [B, 1, H]: each row's prompt's last state
    hidden = torch.cat([last, hidden], dim=1)  # [B, 1 + T, H]
    first_predictor = (seq - attention_mask.sum(dim=1))[:, None]  # column before each row's first token
    at_predictor = torch.arange(seq + 1, device=hidden.device)[None, :] == first_predictor  # [B, 1 + T]
    return torch.where(at_predictor[..., None], last, hidden)


def shared_prefix_labels(labels: torch.Tensor) -> torch.Tensor:
    """[B, T] labels -> [B, 1 + T], aligned with :func:`shared_prefix_hidden`."""
    return torch.cat([labels.new_full((labels.shape[0], 1), IGNORE_INDEX), labels], dim=1)
