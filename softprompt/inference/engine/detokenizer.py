"""Output text token by token, at a cost per token that does not grow with the output.

Decoding all of a sequence's tokens again after each new one makes a long streamed answer cost
time quadratic in its length. The tokenizers library's ``DecodeStream`` decodes a short window of
recent tokens instead and returns only the text they add; while the window ends in an incomplete
character (U+FFFD in a full decode) it waits, so the text never shows a character that later
changes. That equals the full decode wherever decoding is local, which :class:`Detokenizer` checks
once per tokenizer on a probe; a tokenizer that fails it (one whose ``decode`` cleans up spaces
before punctuation, rewriting text already decoded) or has no fast backend is decoded in full
after every token, as before.

Stop strings are searched only where a new match can be: the new text and, before it, one
character less than the longest stop string (an earlier match would have ended the sequence).
"""

from __future__ import annotations

from typing import Any

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from softprompt.inference.engine.sequence import cut_at_stop

# Spaces, punctuation a clean-up would touch, digits, and characters of two to four UTF-8 bytes.
PROBE = "Hello, world! It's 3.14 -- don't stop . , ? ! Ça va? 你好，世界。🙂👍🏽\n\tx  =  [1, 2]"


class Detokenizer:
    """A tokenizer's full decode, and whether streaming it token by token gives the same text."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.backend = backend if isinstance(backend, Tokenizer) else None
        self.incremental = self.backend is not None and self._streams_exactly(_probe_ids(tokenizer))

    def decode(self, ids: list[int]) -> str:
        """The reference: all of ``ids`` at once, special tokens left out."""
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def text(self, stops: tuple[str, ...] = ()) -> OutputText:
        return OutputText(self, stops, self.incremental)

    def _streams_exactly(self, ids: list[int]) -> bool:
        """Whether after every id the streamed text is the full decode less an incomplete last character."""
        out, so_far = OutputText(self, (), incremental=True), []
        for token in ids:
            so_far.append(token)
            out.add(so_far, final=False)
            full = self.decode(so_far)
            held = full[len(out.text) :]
            if out.revisions or not full.startswith(out.text) or (held and not held.endswith("\ufffd")):
                return False
        out.flush(so_far)
        return out.text == self.decode(so_far) and not out.revisions


class OutputText:
    """One sequence's text as its ids arrive, cut at the earliest stop string.

    Until the sequence ends, ``text`` leaves out a last character whose bytes have not all arrived;
    :meth:`flush` then makes it exactly the full decode (cut). ``text`` only grows, unless the
    tokenizer's decoding rewrites earlier text (full-decode mode only): ``revisions`` counts those.
    """

    def __init__(self, detok: Detokenizer, stops: tuple[str, ...], incremental: bool) -> None:
        self.detok, self.stops = detok, stops
        backend = detok.backend if incremental else None
        self.stream = None if backend is None else (DecodeStream(skip_special_tokens=True), backend)
        self.reach = max(map(len, stops), default=1) - 1  # characters before new text a match may start in
        self.raw = ""  # incremental: all text streamed so far, before any cut
        self.held = False  # incremental: the last ids have text not in ``raw`` yet
        self.text = ""
        self.revisions = 0

    def add(self, ids: list[int], final: bool) -> bool:
        """Take in ``ids[-1]`` (``ids``: the output so far); ``final``: it is the last. Returns whether a stop string hit."""
        if self.stream is not None:
            stream, backend = self.stream
            try:
                new = stream.step(backend, ids[-1])
            except Exception:  # the window's decoding rewrote earlier text: decode in full from now on
                self.stream = None
            else:
                self.held = new is None
                if not (final and self.held):
                    return self._extend(new or "")
        return self._decode_all(ids, final)

    def flush(self, ids: list[int]) -> bool:
        """The sequence ends: the text becomes the full decode (cut), held-back bytes shown as U+FFFD."""
        return self._decode_all(ids, final=True) if self.stream is None or self.held else False

    def _extend(self, new: str) -> bool:
        if not new:
            return False
        start = max(0, len(self.raw) - self.reach)
        self.raw += new
        cut = min((at for at in (self.raw.find(s, start) for s in self.stops) if at >= 0), default=-1)
        self.text = self.raw if cut < 0 else self.raw[:cut]
        return cut >= 0

    def _decode_all(self, ids: list[int], final: bool) -> bool:
        full = self.detok.decode(ids)
        text, hit = cut_at_stop(full if final else full.rstrip("\ufffd"), self.stops)
        if not text.startswith(self.text):
            self.revisions += 1
        self.text = text
        return hit


def _probe_ids(tokenizer: Any) -> list[int]:
    """The probe's ids, special tokens amid them, and a spread of low ids (single bytes in byte-level vocabularies)."""
    ids = list(tokenizer.encode(PROBE, add_special_tokens=False))
    special = list(tokenizer.all_special_ids)
    half = len(ids) // 2
    return special + ids[:half] + special + list(range(0, min(len(tokenizer), 600), 7)) + ids[half:] + special
