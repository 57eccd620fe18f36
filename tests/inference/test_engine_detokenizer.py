"""Streamed output text equals the full decode token by token, for tokenizers of every decoding style."""

import random

import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from softprompt.inference.engine.detokenizer import PROBE, Detokenizer, OutputText
from softprompt.inference.engine.sequence import cut_at_stop
from tests.conftest import byte_tokenizer

CORPUS = ["Hello world, this is a test of the tokenizer.", "Ça va? 你好世界 🙂", "don't stop . , ! ?", PROBE] * 20
BYTES = [f"<0x{b:02X}>" for b in range(256)]


def _trained(model, trainer, **parts) -> Tokenizer:
    core = Tokenizer(model)
    for name, part in parts.items():
        setattr(core, name, part)
    core.train_from_iterator(CORPUS, trainer)
    return core


def llama_style() -> PreTrainedTokenizerFast:
    """SentencePiece BPE as Llama 2 ships it: "▁" for spaces, byte fallback, the first space stripped."""
    core = _trained(
        models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True),
        trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", *BYTES]),
        normalizer=normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]),
        decoder=decoders.Sequence(
            [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def metaspace() -> PreTrainedTokenizerFast:
    core = _trained(
        models.BPE(byte_fallback=True, unk_token="<unk>"),
        trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", *BYTES]),
        pre_tokenizer=pre_tokenizers.Metaspace(),
        decoder=decoders.Metaspace(),
    )
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def wordpiece(clean_up: bool) -> PreTrainedTokenizerFast:
    """BERT-style; ``clean_up``: decode removes spaces before punctuation, rewriting text already decoded."""
    core = _trained(
        models.WordPiece(unk_token="[UNK]"),
        trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[UNK]", "[SEP]"]),
        normalizer=normalizers.BertNormalizer(lowercase=False),
        pre_tokenizer=pre_tokenizers.BertPreTokenizer(),
        decoder=decoders.WordPiece(),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="[SEP]", unk_token="[UNK]", clean_up_tokenization_spaces=clean_up
    )


STREAMED = {
    "byte-level": byte_tokenizer,
    "byte-level with bos": lambda: byte_tokenizer(bos=True),
    "llama-style": llama_style,
    "metaspace": metaspace,
    "wordpiece": lambda: wordpiece(False),
}


def _outputs(tokenizer, seed: int) -> list[list[int]]:
    """Id sequences a model might produce: encoded text, special tokens amid it, and random ids."""
    rng = random.Random(seed)
    texts = [tokenizer.encode(rng.choice(CORPUS) + rng.choice(CORPUS), add_special_tokens=False) for _ in range(4)]
    noise = [[rng.randrange(len(tokenizer)) for _ in range(80)] for _ in range(4)]
    special = tokenizer.all_special_ids
    return texts + noise + [ids[:5] + special + ids[5:] + special for ids in texts + noise]


def _stream(detok, ids, stops=()):
    """The text after every id, and where a stop string ended it (None: no stop)."""
    out, so_far, texts = detok.text(stops), [], []
    for index, token in enumerate(ids):
        so_far.append(token)
        if out.add(so_far, final=index == len(ids) - 1):
            return texts + [out.text], index
        texts.append(out.text)
    return texts, None


@pytest.mark.parametrize("name", STREAMED)
def test_streamed_text_is_the_full_decode_after_every_token(name):
    tokenizer = STREAMED[name]()
    detok = Detokenizer(tokenizer)
    assert detok.incremental
    for ids in _outputs(tokenizer, seed=len(name)):
        texts, _ = _stream(detok, ids)
        for end, text in enumerate(texts, start=1):
            full = detok.decode(ids[:end])
            held = full[len(text) :]
            assert full.startswith(text) and (not held or held.endswith("\ufffd")), (ids[:end], text, full)
        assert texts[-1] == detok.decode(ids)


def test_a_tokenizer_whose_decode_rewrites_text_is_decoded_in_full():
    tokenizer = wordpiece(clean_up=True)
    detok = Detokenizer(tokenizer)
    assert not detok.incremental
    ids = tokenizer.encode("don't stop . , ! ?", add_special_tokens=False)
    texts, _ = _stream(detok, ids)
    assert texts[-1] == detok.decode(ids) == "don't stop.,!?"


def test_a_tokenizer_without_a_fast_backend_is_decoded_in_full():
    class Plain:  # e.g. a slow (pure Python) tokenizer
        def decode(self, ids, skip_special_tokens):
            return "".join(chr(ord("a") + i) for i in ids)

    detok = Detokenizer(Plain())
    assert not detok.incremental
    assert _stream(detok, [0, 1, 2]) == (["a", "ab", "abc"], None)


@pytest.mark.parametrize("incremental", [True, False])
def test_stop_strings_cut_where_a_full_search_does(incremental):
    tokenizer = llama_style()
    detok = Detokenizer(tokenizer)
    ids = tokenizer.encode("Hello world, this is a test of the tokenizer. don't stop", add_special_tokens=False)
    for stops in [("lo w",), ("test", "is a"), ("s",), ("tokenizer. d", "nothing"), ("z",), ("t s", "st")]:
        out, so_far = OutputText(detok, stops, incremental), []
        for token in ids:
            so_far.append(token)
            hit = out.add(so_far, final=False)
            assert (out.text, hit) == cut_at_stop(detok.decode(so_far), stops), stops
            if hit:
                break
        assert out.text == cut_at_stop(detok.decode(ids), stops)[0]


def test_an_incomplete_last_character_is_held_back_then_shown_at_the_end():
    tokenizer = byte_tokenizer()
    detok = Detokenizer(tokenizer)
    ids = tokenizer.encode("ab你", add_special_tokens=False)[:-1]  # the last byte of 你 never comes
    out, so_far = detok.text(), []
    for token in ids:
        so_far.append(token)
        out.add(so_far, final=False)
    assert out.text == "ab"
    out.flush(so_far)
    assert out.text == detok.decode(ids) == "ab\ufffd"
