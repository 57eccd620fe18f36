"""KV bookkeeping: prompt KV per adapter and the layout of a running batch's cache.

Under causal attention a soft prompt's keys and values never see the tokens after it, so they
are computed once per adapter (running its virtual tokens alone from position 0) and copied
into every batch that uses it. A batch cache row is laid out as::

    [prompt KV of the row | zeros up to the batch's longest prompt][left padding][real tokens]

with the attention mask 1 only on the row's prompt slots and real tokens. Real tokens take
position ids from the row's prompt length on, so every row sees exactly what it would see alone:
rotary and learned position embeddings are already baked into the cached keys, and ALiBi (bloom)
counts positions from the mask, where masked slots do not count. Merging two batches left-pads
the shorter one with more masked slots, which changes nothing for the same reasons.

Speed: a prefill runs rows of similar length together (:func:`prefill_groups`), so left padding
costs little; the batch cache's full-attention layers are :class:`RoomyLayer` views into buffers
with spare rows and room for slots before and after, so a decode step writes one slot in place
rather than copying the whole cache (transformers' ``DynamicLayer`` concatenates), :func:`admit`
writes newly prefilled rows into spare rows without copying the running ones, and :func:`drop`
fills a finished row's place with a live row from the end instead of copying every row. When
rows or room run out, everything moves to buffers with more of both (:func:`merge`), growing
geometrically so such copies stay rare.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import DynamicLayer

from softprompt.core.decoder import cache_of, layers_of

# Per layer: (keys, values), each [B, kv_heads, S, head_dim].
Layers = list[tuple[torch.Tensor, torch.Tensor]]

# A prefill pass's fixed cost in prompt tokens' worth of compute: rows are split into several
# passes only where that saves more padded tokens than this per extra pass.
PASS_OVERHEAD_TOKENS = 32
# Most rows :func:`prefill_groups` puts in one pass (and the span its search looks back over).
MAX_GROUP_ROWS = 64
# Most slots a merged cache reserves ahead for decoding; beyond it the buffers grow geometrically.
MAX_ROOM = 256


@dataclass(frozen=True)
class PromptKV:
    """One adapter's cached keys/values: per layer (keys, values), each [kv_heads, P, head_dim]."""

    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]

    @property
    def length(self) -> int:
        return int(self.layers[0][0].shape[1]) if self.layers else 0

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)


@dataclass
class BatchKV:
    """The running batch's device state; row i belongs to ``seq_ids[i]``."""

    seq_ids: list[int]
    cache: DynamicCache  # per layer keys/values [B, kv_heads, S, head_dim], grown in place by decode steps
    mask: torch.Tensor  # [B, S] long: 1 on prompt slots and real tokens
    next_position: torch.Tensor  # [B] position id of the token fed next
    last_token: torch.Tensor  # [B] sampled, not yet fed

    def __len__(self) -> int:
        return len(self.seq_ids)


def prompt_prefix(prompts: list[PromptKV | None], device: torch.device) -> tuple[Layers, torch.Tensor]:
    """Stack rows' prompt KV, zero-padded on the right to the longest: per layer [B, h, Pmax, d], mask [B, Pmax]."""
    known = [p for p in prompts if p is not None and p.length]
    p_max = max((p.length for p in known), default=0)
    if not known:
        return [], torch.zeros(len(prompts), 0, dtype=torch.long, device=device)
    first = known[0].layers
    layers: Layers = []
    for index, (k0, v0) in enumerate(first):
        keys = k0.new_zeros(len(prompts), k0.shape[0], p_max, k0.shape[2])
        values = v0.new_zeros(len(prompts), v0.shape[0], p_max, v0.shape[2])
        for row, prompt in enumerate(prompts):
            if prompt is not None and prompt.length:
                k, v = prompt.layers[index]
                keys[row, :, : k.shape[1]] = k
                values[row, :, : v.shape[1]] = v
        layers.append((keys, values))
    mask = torch.zeros(len(prompts), p_max, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        if prompt is not None:
            mask[row, : prompt.length] = 1
    return layers, mask


def prefill_groups(lengths: list[int], overhead: int = PASS_OVERHEAD_TOKENS) -> list[list[int]]:
    """Indices of rows to prefill together: sorted by length, cut where it saves padding.

    One pass over rows left-padded to the longest costs about (rows x longest) token positions plus a
    fixed ``overhead``; the cuts minimise that sum (dynamic programming over the sorted lengths, each
    group at most ``MAX_GROUP_ROWS`` rows). Rows of equal length always share a pass when they fit.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    best = [0] + [float("inf")] * len(order)
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        width = lengths[order[end - 1]]
        for start in range(max(0, end - MAX_GROUP_ROWS), end):
            cost = best[start] + (end - start) * width + overhead
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups: list[list[int]] = []
    end = len(order)
    while end:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


class RoomyLayer(DynamicLayer):
    """A full-attention layer's cache as views [B, h, S, d] of buffers with spare rows and slots.

    ``keys``/``values`` are ``buffer[:rows, :, start:end]``: an update writes its slots after ``end``
    in place; :meth:`admit` writes new rows below the others, right-aligned at ``end`` (the view
    starts earlier when they are longer); :meth:`move_rows` and :meth:`narrow` keep fewer rows or
    drop leading slots. None of them copies the rows already in view. Only written slots are ever in
    view, so the spare rows' and slots' contents never matter. If anything replaces
    ``keys``/``values`` from outside, the next update takes them over (one copy).
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int = 0) -> None:
        super().__init__()
        self._hold(keys, values, room)

    @classmethod
    def joined(cls, parts: Layers, length: int, room: int, rows: int = 0, before: int = 0) -> RoomyLayer:
        """Rows of every part one below the other, each right-aligned in ``length`` slots (zeros before it).

        The buffers hold ``rows`` rows (at least the parts'), ``before`` free slots before the
        ``length`` and ``room`` after them.
        """
        layer = cls.__new__(cls)
        DynamicLayer.__init__(layer)
        count, end = sum(k.shape[0] for k, _ in parts), before + length
        layer._kbuf, layer._vbuf = (_buffer(parts[0][i], max(rows, count), end + room) for i in (0, 1))
        row = 0
        for keys, values in parts:
            span, pad = slice(row, row + keys.shape[0]), end - keys.shape[2]
            for buffer, tensor in ((layer._kbuf, keys), (layer._vbuf, values)):
                buffer[span, :, before:pad] = 0  # masked slots, but attention must not see NaN garbage
                buffer[span, :, pad:end] = tensor
            row += keys.shape[0]
        layer._set(count, before, end, parts[0][0].device)
        return layer

    def fits(self, rows: int, length: int) -> bool:
        """Whether ``rows`` more rows of ``length`` slots can join in place (:meth:`admit`)."""
        return self._ours() and self._rows + rows <= self._kbuf.shape[0] and length <= self._end

    def admit(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """New rows [n, h, w, d] below the others, right-aligned at ``end``, as :meth:`joined` would lay them out.

        Writes only the new rows, and when ``w`` exceeds the width, the slots that come into view
        before the other rows (all masked). The caller checked :meth:`fits`.
        """
        rows, first = slice(self._rows, self._rows + keys.shape[0]), self._end - keys.shape[2]
        start = min(self._start, first)
        for buffer, tensor in ((self._kbuf, keys), (self._vbuf, values)):
            buffer[: self._rows, :, start : self._start] = 0  # masked slots, but attention must not see NaN garbage
            buffer[rows, :, start:first] = 0
            buffer[rows, :, first : self._end] = tensor
        self._set(rows.stop, start, self._end, self.device)

    def _hold(self, keys: torch.Tensor, values: torch.Tensor, room: int) -> None:
        self._kbuf = _buffer(keys, keys.shape[0], keys.shape[2] + room)
        self._vbuf = _buffer(values, values.shape[0], values.shape[2] + room)
        self._kbuf[:, :, : keys.shape[2]] = keys
        self._vbuf[:, :, : values.shape[2]] = values
        self._set(keys.shape[0], 0, keys.shape[2], keys.device)

    def _set(self, rows: int, start: int, end: int, device: torch.device) -> None:
        self._rows, self._start, self._end = rows, start, end
        self.keys = self._kbuf[:rows, :, start:end]
        self.values = self._vbuf[:rows, :, start:end]
        self._views: tuple[torch.Tensor, torch.Tensor] = (self.keys, self.values)
        self.device, self.is_initialized = device, True

    def _ours(self) -> bool:
        return self.is_initialized and self.keys is self._views[0] and self.values is self._views[1]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self._hold(key_states[:, :, :0], value_states[:, :, :0], key_states.shape[2])

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        new = key_states.shape[2]
        if not self._ours():
            if self.keys is None or self.values is None:
                self.lazy_initialization(key_states, value_states)
            else:
                self._hold(self.keys, self.values, new)
        if self._end + new > self._kbuf.shape[2]:  # out of room: move to buffers with as much room again
            self._grow(max(new, self._end - self._start, 16))
        end = self._end + new
        self._kbuf[: self._rows, :, self._end : end] = key_states
        self._vbuf[: self._rows, :, self._end : end] = value_states
        self._set(self._rows, self._start, end, self.device)
        return self._views

    def _grow(self, room: int) -> None:
        """Move to buffers with ``room`` free slots after the view, keeping the spare rows.

        At most half the view's width stays free before it: a batch that never empties keeps
        writing further right, and the slots its finished rows left behind must not pile up.
        """
        width = self._end - self._start
        before = min(self._start, width // 2)
        kbuf, vbuf = (_buffer(b, b.shape[0], before + width + room) for b in (self._kbuf, self._vbuf))
        keys, values = self._views
        kbuf[: self._rows, :, before : before + width] = keys
        vbuf[: self._rows, :, before : before + width] = values
        self._kbuf, self._vbuf = kbuf, vbuf
        self._set(self._rows, before, before + width, self.device)

    def move_rows(self, sources: list[int], targets: list[int], rows: int) -> None:
        """Row ``sources[i]`` takes the place of ``targets[i]``; then only the first ``rows`` rows remain."""
        if sources:
            to, frm = torch.tensor(targets, device=self.device), torch.tensor(sources, device=self.device)
            view = slice(self._start, self._end)
            self._kbuf[to, :, view] = self._kbuf[frm, :, view]
            self._vbuf[to, :, view] = self._vbuf[frm, :, view]
        self._set(rows, self._start, self._end, self.device)

    def narrow(self, drop: int) -> None:
        """Forget the first ``drop`` slots of every row."""
        self._set(self._rows, self._start + drop, self._end, self.device)


def _buffer(like: torch.Tensor, rows: int, slots: int) -> torch.Tensor:
    return like.new_empty(rows, like.shape[1], slots, like.shape[3])


def admit(batch: BatchKV | None, new: BatchKV, config: PretrainedConfig, room: int, rows: int) -> BatchKV:
    """The running ``batch`` with ``new``'s rows below its own (``batch`` None: ``new`` alone, in roomy buffers).

    When every full-attention layer has spare rows and enough slots before its view
    (:meth:`RoomyLayer.fits`), only the new rows are written; other layers (sliding windows) are
    joined as in :func:`merge`. Otherwise everything moves to new buffers: :func:`merge` with
    ``room`` and ``rows`` (room for that many rows in all).
    """
    roomy = [] if batch is None else [layer for layer in batch.cache.layers if isinstance(layer, RoomyLayer)]
    if batch is None or not roomy or not all(layer.fits(len(new), new.mask.shape[1]) for layer in roomy):
        return merge([new] if batch is None else [batch, new], config, room, rows)
    length = max(batch.mask.shape[1], new.mask.shape[1])
    kinds = DynamicCache(config=config).layers  # fresh layers of the kinds ``config`` asks for
    for index, (old, added) in enumerate(zip(layers_of(batch.cache), layers_of(new.cache))):
        layer = batch.cache.layers[index]
        if isinstance(layer, RoomyLayer):
            layer.admit(*added)
        else:  # e.g. a sliding window's layer: joined as merge joins it
            fresh = kinds[index]
            assert isinstance(fresh, DynamicLayer)  # as merge laid the batch out
            fresh.update(*_joined([old, added], length))
            batch.cache.layers[index] = fresh
    return _stacked([batch, new], batch.cache, length)


def merge(parts: list[BatchKV], config: PretrainedConfig, room: int = 0, rows: int = 0) -> BatchKV:
    """Rows of every part in one batch, the shorter caches left-padded with masked slots.

    Full-attention layers become :class:`RoomyLayer` buffers with ``room`` free slots after the
    longest row (at most ``MAX_ROOM``), half as many again as the width before it, and room for
    ``rows`` rows, so the next decode steps and admissions copy nothing; other kinds of layer
    (sliding windows) are concatenated into the layers transformers makes for ``config``.
    """
    parts = [p for p in parts if len(p)]
    if len(parts) == 1 and not room:
        return parts[0]
    length = max(p.mask.shape[1] for p in parts)
    per_part = [layers_of(p.cache) for p in parts]
    here = [[layers[index] for layers in per_part] for index in range(len(per_part[0]))]
    cache = DynamicCache(config=config)
    kinds = [layer for layer in cache.layers if isinstance(layer, DynamicLayer)]
    if len(kinds) != len(here):  # no such layer list from the config: transformers' default layout
        cache = cache_of([_joined(parts_of_layer, length) for parts_of_layer in here], config)
    for index, layer in enumerate(kinds if len(kinds) == len(here) else []):
        if type(layer) is DynamicLayer:
            cache.layers[index] = RoomyLayer.joined(here[index], length, min(room, MAX_ROOM), rows, length // 2)
        else:  # e.g. a sliding window's layer
            layer.update(*_joined(here[index], length))
    return _stacked(parts, cache, length)


def _stacked(parts: list[BatchKV], cache: DynamicCache, length: int) -> BatchKV:
    """The parts' rows one below the other around ``cache``; masks left-padded to ``length`` (small: no KV)."""
    masks = [torch.cat([p.mask.new_zeros(len(p), length - p.mask.shape[1]), p.mask], dim=1) for p in parts]
    return BatchKV(
        seq_ids=[i for p in parts for i in p.seq_ids],
        cache=cache,
        mask=torch.cat(masks),
        next_position=torch.cat([p.next_position for p in parts]),
        last_token=torch.cat([p.last_token for p in parts]),
    )


def _joined(parts: Layers, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    keys = torch.cat([_pad_seq(k, length - k.shape[2]) for k, _ in parts])
    values = torch.cat([_pad_seq(v, length - v.shape[2]) for _, v in parts])
    return keys, values


def _pad_seq(tensor: torch.Tensor, extra: int) -> torch.Tensor:
    if extra == 0:
        return tensor
    zeros = tensor.new_zeros(*tensor.shape[:2], extra, tensor.shape[3])
    return torch.cat([zeros, tensor], dim=2)


def drop(batch: BatchKV, finished: set[int], config: PretrainedConfig) -> BatchKV | None:
    """The batch without the rows of ``finished`` sequences (None when none is left).

    When every layer is a :class:`RoomyLayer`, the live rows past the new end move into the
    finished rows' places (rows change order; ``seq_ids`` follow) and leading slots that no row
    attends to are dropped, without copying the rows that stay; otherwise as :func:`select`.
    """
    keep = [i for i, seq_id in enumerate(batch.seq_ids) if seq_id not in finished]
    if len(keep) == len(batch):
        return batch
    if not keep:
        return None
    layers = [layer for layer in batch.cache.layers if isinstance(layer, RoomyLayer) and layer._ours()]
    if not layers or len(layers) != len(batch.cache.layers):
        return select(batch, keep, config)
    rows = len(keep)
    holes = [i for i in range(rows) if batch.seq_ids[i] in finished]
    movers = [i for i in keep if i >= rows]
    order = list(range(rows))
    for hole, mover in zip(holes, movers):
        order[hole] = mover
    index = torch.tensor(order, dtype=torch.long, device=batch.mask.device)
    mask = batch.mask.index_select(0, index)
    used = mask.any(dim=0).nonzero()
    start = int(used[0]) if used.numel() else mask.shape[1]
    for layer in layers:
        layer.move_rows(movers, holes, rows)
        if start:
            layer.narrow(start)
    return BatchKV(
        seq_ids=[batch.seq_ids[i] for i in order],
        cache=batch.cache,
        mask=mask[:, start:],
        next_position=batch.next_position.index_select(0, index),
        last_token=batch.last_token.index_select(0, index),
    )


def select(batch: BatchKV, keep: list[int], config: PretrainedConfig) -> BatchKV:
    """Keep only rows ``keep`` (in that order), then drop leading slots no remaining row attends to."""
    index = torch.tensor(keep, dtype=torch.long, device=batch.mask.device)
    layers = layers_of(batch.cache)
    mask = batch.mask.index_select(0, index)
    used = mask.any(dim=0).nonzero()
    start = int(used[0]) if used.numel() else mask.shape[1]
    return BatchKV(
        seq_ids=[batch.seq_ids[i] for i in keep],
        cache=cache_of(
            [(k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:]) for k, v in layers],
            config,
        ),
        mask=mask[:, start:],
        next_position=batch.next_position.index_select(0, index),
        last_token=batch.last_token.index_select(0, index),
    )
