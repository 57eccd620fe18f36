"""One choice of an answer as it grows: new text and new log-probabilities, in OpenAI's shapes.

Completions use the legacy shape ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``;
with ``echo`` the prompt's tokens come first, the first of them with ``null`` (nothing predicts
it), which is what lm-evaluation-harness's ``local-completions`` model reads for loglikelihood.
As in vLLM, ``top_logprobs`` maps the top-N tokens and the chosen one to their log-probabilities,
and every sampled token is listed, a final end-of-sequence token and the tokens of a stop string
included, though the text leaves them out. Chat uses ``{"content": [{"token", "logprob",
"bytes", "top_logprobs"}]}``. Log-probabilities are the model's (raw logits), not the sampler's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers.convert_slow_tokenizer import bytes_to_unicode

from softprompt.inference.engine import Sequence
from softprompt.inference.engine.sequence import TokenLogprob
from softprompt.inference.serve.formats import public_reason
from softprompt.inference.serve.worker import Snapshot

Entry = tuple[int, TokenLogprob | None]  # token id, and None for a prompt's first token
_BYTE_OF = {char: byte for byte, char in bytes_to_unicode().items()}  # byte-level BPE's alphabet


class TokenTexts:
    """Token id -> (its text, its UTF-8 bytes), cached: answers with log-probabilities name every token.

    A token that is only part of a character (byte-level BPE splits emoji, CJK, ...) decodes to
    U+FFFD, which would make different tokens look alike; as OpenAI does, such a token is named
    ``bytes:\\xNN...`` after its raw bytes.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, tuple[str, bytes]] = {}

    def __call__(self, token: int) -> str:
        return self.of(token)[0]

    def of(self, token: int) -> tuple[str, bytes]:
        known = self._cache.get(token)
        if known is None:
            text = str(self.tokenizer.decode([token], skip_special_tokens=False))
            raw = self._raw(token) if "\ufffd" in text else None
            if raw is None:
                known = (text, text.encode("utf-8"))
            else:
                known = ("bytes:" + "".join(f"\\x{b:02x}" for b in raw), raw)
            self._cache[token] = known
        return known

    def _raw(self, token: int) -> bytes | None:
        """The token's bytes, for byte-level BPE (GPT-2 style) and byte-fallback (``<0xNN>``) vocabularies."""
        piece = str(self.tokenizer.convert_ids_to_tokens(token))
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        if all(c in _BYTE_OF for c in piece):
            return bytes(_BYTE_OF[c] for c in piece)
        return None


@dataclass(frozen=True)
class Delta:
    text: str
    logprobs: dict[str, Any] | None  # None when the request asked for none
    finish_reason: str | None
    news: bool  # anything to send: text, tokens or the end


class Choice:
    def __init__(
        self, seq: Sequence, texts: TokenTexts, chat: bool, top: int | None, echo: str | None, hide: bool
    ) -> None:
        self.seq, self.texts, self.chat, self.top, self.echo, self.hide = seq, texts, chat, top, echo, hide
        self.sent = 0  # characters of the text already sent: the first ones of ``shown``
        self.shown = ""
        self.revisions = 0  # the snapshots' count that ``shown`` was checked against
        self.sent_tokens = 0  # entries of seq.logprobs already reported
        self.offset = 0  # text_offset of the next token
        self.started = False

    def advance(self, snap: Snapshot) -> Delta:
        """What is new since the last call; the first call also carries the echoed prompt."""
        prefix, entries = "", []
        if not self.started:
            self.started = True
            if self.echo is not None:
                prefix, entries = self.echo, self._prompt_entries()
        delta = "" if self.hide else self._new_text(snap)
        shown = 0 if self.hide else snap.sampled
        if self.top is not None and shown > self.sent_tokens:
            entries += [(e.token, e) for e in self.seq.logprobs[self.sent_tokens : shown]]
            self.sent_tokens = shown
        reason = None if snap.finish_reason is None else ("length" if self.hide else public_reason(snap.finish_reason))
        logprobs = None if self.top is None else self._render(entries)
        return Delta(prefix + delta, logprobs, reason, bool(prefix or delta or entries or reason))

    def _new_text(self, snap: Snapshot) -> str:
        """Text after what was sent, in time that does not grow with the text: it only grows at its end,
        unless the tokenizer's decoding rewrote it (``revisions``); then more goes out once it again
        starts with what was sent."""
        text, end = snap.text, snap.safe
        if snap.revisions != self.revisions:
            if not text.startswith(self.shown[: self.sent]):
                return ""
            self.revisions = snap.revisions
        self.shown = text
        delta = text[self.sent : end]
        self.sent += len(delta)
        return delta

    def _prompt_entries(self) -> list[Entry]:
        if self.top is None:
            return []
        ids = self.seq.prompt_ids
        return [(ids[0], None)] + [(e.token, e) for e in self.seq.prompt_logprobs]

    def _render(self, entries: list[Entry]) -> dict[str, Any]:
        return self._chat(entries) if self.chat else self._legacy(entries)

    def _legacy(self, entries: list[Entry]) -> dict[str, Any]:
        out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for token, entry in entries:
            text, raw = self.texts.of(token)
            out["tokens"].append(text)
            out["text_offset"].append(self.offset)
            self.offset += len(raw.decode("utf-8", errors="replace"))  # as decoded alone (vLLM does the same)
            if entry is None:
                out["token_logprobs"].append(None)
                out["top_logprobs"].append(None)
            else:
                out["token_logprobs"].append(entry.logprob)
                out["top_logprobs"].append({**{self.texts(t): lp for t, lp in entry.top}, text: entry.logprob})
        return out

    def _chat(self, entries: list[Entry]) -> dict[str, Any]:
        content = []
        for token, entry in entries:
            assert entry is not None  # chat has no echo, so no unscored prompt token
            content.append(
                {**self._token(token, entry.logprob), "top_logprobs": [self._token(t, lp) for t, lp in entry.top]}
            )
        return {"content": content, "refusal": None}

    def _token(self, token: int, logprob: float) -> dict[str, Any]:
        text, raw = self.texts.of(token)
        return {"token": text, "logprob": logprob, "bytes": list(raw)}
