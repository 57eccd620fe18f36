"""OpenAI's response shapes (serve/formats.py): bodies, stream chunks, events and the finish reasons a client sees."""

from softprompt.inference.serve.formats import Format, public_reason, sse


def test_bodies_and_chunks_take_the_endpoints_shapes():
    chat, text = Format(chat=True, model="m"), Format(chat=False, model="m")
    assert chat.id.startswith("chatcmpl-") and text.id.startswith("cmpl-") and chat.id != Format(True, "m").id
    first, later = chat.chunk(0, None, None, first=True), chat.chunk(1, "hi", "stop")
    assert first["object"] == "chat.completion.chunk" and first["id"] == later["id"] == chat.id
    assert first["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    assert later["choices"][0]["delta"] == {"content": "hi"} and later["choices"][0]["finish_reason"] == "stop"
    body = text.body([text.choice(0, "out", "length", None)], prompt_tokens=3, completion_tokens=2)
    assert body["object"] == "text_completion" and body["model"] == "m"
    assert body["choices"] == [{"index": 0, "text": "out", "logprobs": None, "finish_reason": "length"}]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert chat.choice(0, "x", "stop", None)["message"] == {"role": "assistant", "content": "x"}
    assert chat.usage_chunk(1, 1)["choices"] == []


def test_events_keep_text_as_written_and_reasons_are_openais():
    assert sse("[DONE]") == "data: [DONE]\n\n"
    assert sse({"text": "caf\u00e9"}) == 'data: {"text": "caf\u00e9"}\n\n'
    reasons = [public_reason(r) for r in ("stop", "length", "cancelled", "error", None)]
    assert reasons == ["stop", "length", "stop", "stop", "stop"]
