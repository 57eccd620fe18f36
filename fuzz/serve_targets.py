"""Fuzz targets for the OpenAI-compatible server: request bytes in, through the real ASGI app.

One target per endpoint that takes client input: ``POST /v1/completions``, ``POST
/v1/chat/completions``, ``POST /v1/adapters`` (load), ``GET /v1/adapters/{name}`` and ``DELETE
/v1/adapters/{name}`` (unload), where the input is the name in the path. The app is the one
``softprompt serve`` runs (:func:`softprompt.inference.serve.create_app`, every middleware, the
engine thread, an API key and adapter admin on) over a tiny random Llama with three adapters,
an adapter of another base model and a broken one. It is called directly as an ASGI app on one
event loop kept for the whole run: no sockets, no client per input, nothing of the app skipped.

The server's limits are set small (as an operator may set them), so that no valid request can
run long: at most 8 new tokens, 48 prompt tokens, 8 sequences, a 56-token context and a
6,144-byte body. Nothing in the harness clamps a request.

Byte layout after the target selector: ``data[0]`` is a control byte (which credential, which
content type, whether the body arrives in one piece with a Content-Length or in chunks without),
the rest is the body (or the adapter name). Every input must get a complete response with a
status below 500; a 4xx must be OpenAI's JSON error shape with a non-empty one-line message; a
stream must end with ``data: [DONE]`` and may carry no server error event; no exception may
leave the app, nothing may be logged at ERROR, and every request slot must be given back.
Anything else raises out of the target (a finding for fuzz/run.py).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import torch

from fuzz.targets import tiny_model
from softprompt.core.prompt import PromptConfig
from softprompt.core.prompted import SoftPromptModel
from softprompt.inference.engine import AdapterRegistry, Engine, EngineConfig
from softprompt.inference.serve import ServeConfig, create_app

KEY = "fuzz-key"
MODEL = "tiny"
SERVED = ("alpha", "beta", "deep")  # adapters the server starts with; every input leaves the registry so
CHAT_TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>"
LIMITS = dict(
    max_concurrent=8, max_tokens=8, default_max_tokens=4, max_prompt_tokens=48, max_body_bytes=6144, api_key=KEY
)
MAX_CONTEXT = 56  # below prompt + max_tokens + soft prompt, so the engine's context check is reachable too

# Credentials by the control byte's low 3 bits: six valid spellings in eight, so most bodies reach validation.
AUTH = [f"Bearer {KEY}"] * 4 + [f"bearer   {KEY} ", f"BEARER {KEY}", None, "Bearer nope"]
CONTENT_TYPES = [b"application/json", None, b"text/plain", b"application/json; charset=utf-8"]


class BadAnswer(AssertionError):
    """The app answered, but not as the contract says; ``kind`` tells findings apart."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail[:300]}")
        self.kind = kind


class _Errors(logging.Handler):
    """Collects what the server logs at ERROR: an engine step that failed, an unhandled exception."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class ServeTargets:
    """The app, its event loop (kept for the run) and the adapters; ``close`` shuts it all down."""

    def __init__(self, work: Path) -> None:
        torch.set_num_threads(1)
        base = tiny_model()
        base.tokenizer.chat_template = CHAT_TEMPLATE
        root = work / "adapters"
        for seed, name in enumerate(SERVED):
            form = "kv" if name == "deep" else "vectors"
            config = PromptConfig(num_virtual_tokens=4, init="random", form=form)
            SoftPromptModel.with_new_prompt(base, config, seed).save_pretrained(root / name)
        config = PromptConfig(num_virtual_tokens=2, init="random")
        SoftPromptModel.with_new_prompt(tiny_model(seed=1), config).save_pretrained(root / "other-base")
        (root / "broken").mkdir()
        (root / "broken" / "adapter_config.json").write_text('{"num_virtual_tokens": 4}')
        (root / "broken" / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
        registry = AdapterRegistry(base, root)
        for name in SERVED:
            registry.add(name)
        self.registry = registry
        self.baseline = {name: registry.path(name) for name in SERVED}
        engine = Engine(base, registry, EngineConfig(max_batch_size=8, max_context=MAX_CONTEXT))
        self.app = create_app(engine, ServeConfig(served_model_name=MODEL, enable_adapter_admin=True, **LIMITS))
        self.service = self.app.state.service
        self.errors = _Errors()
        self._logger = logging.getLogger("softprompt")
        self._saved = (self._logger.propagate, self._logger.level)
        self._logger.addHandler(self.errors)
        self._logger.propagate = False  # the warnings the fuzzer provokes (bad adapter files) stay quiet
        self._logger.setLevel(logging.WARNING)
        self.loop = asyncio.new_event_loop()
        self._lifespan: asyncio.Queue[dict[str, Any]] | None = None
        self._lifespan_task: asyncio.Task[None] | None = None
        self.loop.run_until_complete(self._start())
        self.all: list[Callable[[bytes], Any]] = [
            self.serve_completions,
            self.serve_chat,
            self.serve_adapter_load,
            self.serve_adapter_get,
            self.serve_adapter_delete,
        ]

    # -- the targets ------------------------------------------------------------------------

    def serve_completions(self, data: bytes) -> tuple[Any, ...]:
        return self._body("/v1/completions", data)

    def serve_chat(self, data: bytes) -> tuple[Any, ...]:
        return self._body("/v1/chat/completions", data)

    def serve_adapter_load(self, data: bytes) -> tuple[Any, ...]:
        return self._body("/v1/adapters", data)

    def serve_adapter_get(self, data: bytes) -> tuple[Any, ...]:
        return self._named("GET", data)

    def serve_adapter_delete(self, data: bytes) -> tuple[Any, ...]:
        return self._named("DELETE", data)

    def _body(self, path: str, data: bytes) -> tuple[Any, ...]:
        control, body = (data[0], data[1:]) if data else (0, b"")
        return self._request("POST", path, path.encode(), control, body)

    def _named(self, method: str, data: bytes) -> tuple[Any, ...]:
        """The name as a client would send it: percent-encoded in the raw path, decoded in ``path``."""
        control, name = (data[0], data[1:]) if data else (0, b"")
        raw = b"/v1/adapters/" + quote(name, safe="").encode()
        return self._request(method, "/v1/adapters/" + name.decode("utf-8", "replace"), raw, control, b"")

    # -- one request ------------------------------------------------------------------------

    def _request(self, method: str, path: str, raw_path: bytes, control: int, body: bytes) -> tuple[Any, ...]:
        """Send one request, check the answer and the server's state; returns the outcome's kind (for feedback)."""
        headers = [(b"host", b"fuzz")]
        auth = AUTH[control & 7]
        if auth is not None:
            headers.append((b"authorization", auth.encode()))
        content_type = CONTENT_TYPES[(control >> 3) & 3]
        if content_type is not None and method == "POST":
            headers.append((b"content-type", content_type))
        chunked = bool(control & 0x20) and len(body) > 1
        if not chunked:
            headers.append((b"content-length", str(len(body)).encode()))
        chunks = [body[: len(body) // 2], body[len(body) // 2 :]] if chunked else [body]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": raw_path,
            "root_path": "",
            "query_string": b"",
            "headers": headers,
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        self.errors.records.clear()
        try:
            status, response_headers, content = self.loop.run_until_complete(self._call(scope, chunks))
            outcome = _check(status, response_headers, content)
            logged = [r for r in self.errors.records if r.levelno >= logging.ERROR]
            if logged:
                raise BadAnswer("logged an error", logged[0].getMessage())
            if self.service.worker.active or self.service.drain.in_flight:
                raise BadAnswer("leak", f"{self.service.worker.active} slots, {self.service.drain.in_flight} in flight")
            return outcome
        finally:
            self._restore()

    async def _call(self, scope: dict[str, Any], chunks: list[bytes]) -> tuple[int, dict[bytes, bytes], bytes]:
        pending = list(chunks)
        done = asyncio.Event()
        start: dict[str, Any] = {}
        parts: list[bytes] = []

        async def receive() -> dict[str, Any]:
            if pending:
                chunk = pending.pop(0)
                return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
            await done.wait()  # the connection stays open until the answer is complete
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                if start:
                    raise BadAnswer("protocol", "response started twice")
                start.update(message)
            elif message["type"] == "http.response.body":
                if not start or done.is_set():
                    raise BadAnswer("protocol", "body sent outside a response")
                parts.append(message.get("body", b""))
                if not message.get("more_body", False):
                    done.set()

        await self.app(scope, receive, send)
        if not done.is_set():
            raise BadAnswer("protocol", f"the app returned before its response was complete ({start.get('status')})")
        return int(start["status"]), dict(start.get("headers") or []), b"".join(parts)

    def _restore(self) -> None:
        """Undo what a load or unload did, so that valid bodies keep naming served adapters."""
        registry = self.registry
        for name in registry.names():
            if name not in self.baseline:
                registry.remove(name)
        for name, path in self.baseline.items():
            if name not in registry or registry.path(name) != path:
                registry.add(name)

    # -- lifespan ---------------------------------------------------------------------------

    async def _start(self) -> None:
        """The ASGI lifespan protocol, as uvicorn drives it: this starts the engine thread."""
        self._lifespan = asyncio.Queue()
        await self._lifespan.put({"type": "lifespan.startup"})
        started: asyncio.Future[None] = self.loop.create_future()
        lifespan = self._lifespan

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                started.set_result(None)
            elif message["type"] == "lifespan.startup.failed":
                started.set_exception(RuntimeError(message.get("message", "startup failed")))

        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        self._lifespan_task = self.loop.create_task(self.app(scope, lifespan.get, send))
        await started

    def close(self) -> None:
        if self._lifespan is not None and self._lifespan_task is not None:
            self._lifespan.put_nowait({"type": "lifespan.shutdown"})
            self.loop.run_until_complete(asyncio.wait_for(self._lifespan_task, 30))
        self.loop.close()
        self._logger.removeHandler(self.errors)
        self._logger.propagate, level = self._saved
        self._logger.setLevel(level)

    # -- mutation ---------------------------------------------------------------------------

    def mutate(self, data: bytes, rng: random.Random) -> bytes | None:
        """Structure-aware: parse the body as JSON and change values, types, keys and nesting; None if it is not JSON."""
        control, body = (data[0], data[1:]) if data else (0, b"")
        if rng.random() < 0.1:
            control ^= 1 << rng.randrange(8)
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            return None
        for _ in range(rng.randint(1, 3)):
            doc = _mutate_json(doc, rng)
        try:
            text = json.dumps(doc, allow_nan=True, ensure_ascii=rng.random() < 0.8)
        except (ValueError, RecursionError):  # an integer over 4300 digits, nesting beyond the recursion limit
            return None
        return bytes([control]) + text.encode("utf-8", "surrogatepass")


# -- checks ---------------------------------------------------------------------------------


def _one_line(kind: str, error: Any) -> None:
    if not isinstance(error, dict):
        raise BadAnswer(kind, f"no error object: {error!r}")
    message = error.get("message")
    if not isinstance(message, str) or not message.strip() or len(message.splitlines()) != 1 or "\n" in message:
        raise BadAnswer(f"{kind}: message not one line", repr(message))


def _check(status: int, headers: dict[bytes, bytes], content: bytes) -> tuple[Any, ...]:
    """Raise BadAnswer unless the response keeps the contract; returns (status, code, param) for feedback."""
    kind = headers.get(b"content-type", b"").split(b";")[0]
    if status >= 500:
        raise BadAnswer(f"status {status}", content.decode("utf-8", "replace"))
    if status >= 400:
        if kind != b"application/json":
            raise BadAnswer(f"status {status} not JSON", f"{kind!r}: {content[:200]!r}")
        try:
            error = json.loads(content)["error"]
        except (ValueError, KeyError, TypeError) as exc:
            raise BadAnswer(f"status {status} not an error body", repr(content[:200])) from exc
        param = error.get("param") if error.get("param") in FIELDS else "<other>"
        _one_line(f"status {status} param {param}", error)
        return status, error.get("code"), param
    if 300 <= status < 400:  # the router's redirect of a trailing slash ("/v1/adapters/" with an empty name)
        if b"location" not in headers:
            raise BadAnswer(f"status {status} without location", repr(content[:200]))
        return status, None, None
    if kind == b"text/event-stream":
        events = content.decode("utf-8").split("\n\n")
        if events[-1] != "" or events[-2] != "data: [DONE]":
            raise BadAnswer("stream not ended by [DONE]", repr(content[-200:]))
        for event in events[:-2]:
            if not event.startswith("data: "):
                raise BadAnswer("stream event", repr(event[:200]))
            chunk = json.loads(event[6:])
            if "error" in chunk:
                _one_line("stream error event", chunk["error"])
                if chunk["error"].get("type") == "server_error":
                    raise BadAnswer("stream server error", chunk["error"].get("message", ""))
                return status, "stream", chunk["error"].get("code")
        return status, "stream", None
    body = json.loads(content)
    if not isinstance(body, dict):
        raise BadAnswer("not a JSON object", repr(content[:200]))
    return status, body.get("object"), None


# -- structure-aware JSON mutation -------------------------------------------------------------

FIELDS = [
    "model",
    "prompt",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "logprobs",
    "top_logprobs",
    "echo",
    "best_of",
    "suffix",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "user",
    "name",
    "path",
    "role",
    "content",
    "type",
    "text",
    "include_usage",
]
HOSTILE: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2,
    3,
    8,
    9,
    16,
    17,
    20,
    21,
    255,
    256,
    257,
    2**31,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63) - 1,
    10**400,
    0.0,
    -0.0,
    0.5,
    1.0,
    1.5,
    2.0000001,
    1e-300,
    5e-324,
    1e300,
    math.inf,
    -math.inf,
    math.nan,
    "",
    " ",
    "x",
    "\n",
    "\r\n",
    "\x00",
    "\u2028",
    "\x85",
    "\ud800",
    "\udfff",
    "\U0001f600",
    "\u00e9\u4e2d",
    "tiny",
    "alpha",
    "beta",
    "deep",
    "broken",
    "other-base",
    "../alpha",
    "/etc",
    ".",
    "..",
    "alpha/../beta",
    "nope",
    "user",
    "system",
    "assistant",
    "developer",
    "tool",
    "text",
    "image_url",
    "include_usage",
    "{text}",
    "%s%n",
    "a" * 300,
    "\n" * 50,
    [],
    {},
    [1, 2, 3],
    [[1], [2, 3]],
    [[]],
    ["a", "b"],
    ["x"] * 5,
    [0] * 60,
    [-1],
    [257],
    {"include_usage": True},
    {"a\nb": 1},
    {"role": "user", "content": "hi"},
    {"type": "text", "text": "hi"},
    [{"role": "user", "content": "hi"}],
]


def _containers(doc: Any, out: list[tuple[Any, Any]], depth: int = 0) -> None:
    """Every (container, key) pair in the document, so one value can be picked and changed in place."""
    if depth > 40:
        return
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.append((doc, key))
            _containers(value, out, depth + 1)
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            out.append((doc, index))
            _containers(value, out, depth + 1)


def _new_value(old: Any, rng: random.Random) -> Any:
    op = rng.randrange(10)
    if op < 4:
        return copy.deepcopy(rng.choice(HOSTILE))
    if op == 4 and isinstance(old, (int, float)) and not isinstance(old, bool):
        try:
            return rng.choice(
                [
                    old + 1,
                    old - 1,
                    -old,
                    old * 2 ** rng.randint(1, 70),
                    float(old),
                    int(old) if math.isfinite(old) else 0,
                ]
            )
        except (OverflowError, ValueError):
            return 0
    if op == 5 and isinstance(old, str):
        pos = rng.randint(0, len(old))
        return (
            old[:pos]
            + rng.choice(["\n", "\u2028", "\ud800", "\x00", "\U0001f600", "é", "{", "'", '"', "\\"])
            + old[pos:]
        )
    if op == 6:
        return [old] * rng.randint(1, 20)
    if op == 7:
        return {rng.choice(FIELDS): old}
    if op == 8:
        value = old
        for _ in range(rng.choice([2, 10, 100, 900])):
            value = [value]
        return value
    return rng.choice([repr(type(old).__name__), [], {}, None, old])


def _mutate_json(doc: Any, rng: random.Random) -> Any:
    spots: list[tuple[Any, Any]] = []
    _containers(doc, spots)
    if not spots or rng.random() < 0.03:
        return _new_value(doc, rng)  # the whole body: a list, a string, a number
    container, key = rng.choice(spots)
    op = rng.randrange(12)
    if op >= 8 and isinstance(container, dict):  # a valid value for the field, or another valid field
        name = key if key in KNOWN and op < 10 else rng.choice(sorted(KNOWN))
        container[name] = copy.deepcopy(rng.choice(KNOWN[name]))
    elif op == 0:  # drop the field or element
        del container[key]
    elif op == 1 and isinstance(container, dict):  # add a field, known or not
        name = rng.choice(FIELDS) if rng.random() < 0.8 else rng.choice(["", "\n", "x" * 40, "\ud800", "__class__"])
        container[name] = copy.deepcopy(rng.choice(HOSTILE))
    elif op == 2 and isinstance(container, list):
        container.insert(rng.randint(0, len(container)), rng.choice(container))
    else:
        container[key] = _new_value(container[key], rng)
    return doc


# -- seeds ----------------------------------------------------------------------------------


USER = [{"role": "user", "content": "hi"}]
COMPLETIONS: list[dict[str, Any]] = [
    {"model": MODEL, "prompt": "hello", "max_tokens": 2},
    {"model": "alpha", "prompt": ["hi", "there"], "max_tokens": 1, "temperature": 0, "stop": ["\n", "x"], "seed": 3},
    {"model": "beta", "prompt": [1, 2, 3], "max_tokens": 2, "logprobs": 2, "echo": True},
    {"model": MODEL, "prompt": [[5, 6], [7]], "max_tokens": 0, "echo": True, "logprobs": 1},
    {
        "model": "deep",
        "prompt": "stream me",
        "max_tokens": 3,
        "stream": True,
        "n": 2,
        "stream_options": {"include_usage": True},
    },
    {
        "model": MODEL,
        "prompt": "x",
        "max_tokens": 2,
        "n": 2,
        "best_of": 2,
        "suffix": "",
        "logit_bias": {},
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "user": "u",
        "top_p": 0.9,
    },
    {"model": "alpha", "prompt": "y", "max_tokens": 8, "stream": True, "logprobs": 3, "echo": True, "stop": "a"},
    {"model": "nope", "prompt": "x"},
    {"model": MODEL, "prompt": "x" * 50, "max_tokens": 8},  # over max_prompt_tokens
    {"model": "alpha", "prompt": "x" * 46, "max_tokens": 8},  # within it, over the context with the soft prompt
]
CHAT: list[dict[str, Any]] = [
    {"model": MODEL, "messages": USER, "max_tokens": 2},
    {
        "model": "alpha",
        "max_completion_tokens": 2,
        "logprobs": True,
        "top_logprobs": 2,
        "stream": True,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ],
    },
    {
        "model": "beta",
        "max_tokens": 1,
        "n": 3,
        "seed": 1,
        "stop": "a",
        "temperature": 1.5,
        "messages": [
            {"role": "developer", "content": "x"},
            {"role": "assistant", "content": "y"},
            {"role": "user", "content": "z"},
        ],
    },
    {"model": "deep", "messages": USER, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 2},
    {"model": MODEL, "messages": USER, "logprobs": False, "top_logprobs": 1},
    {"model": MODEL, "messages": [{"role": "user", "content": "z" * 40}], "max_tokens": 8},
]
LOADS: list[dict[str, Any]] = [
    {"name": "gamma", "path": "alpha"},
    {"name": "alpha"},
    {"name": "beta", "path": "beta"},
    {"name": "x", "path": "broken"},
    {"name": "y", "path": "other-base"},
    {"name": MODEL},
    {"name": "../alpha"},
    {"name": "z", "path": "/etc"},
    {"name": "z", "path": "../"},
    {"name": "a", "path": None, "extra": 1},
]
NAMES = [b"alpha", b"beta", b"deep", b"nope", b"..", b"a/b", b"%2e%2e", b"", b"broken", b"x" * 70, b"\xff\n"]
# Valid values beyond the seeds', at the edges of each field's range.
EDGES: dict[str, list[Any]] = {
    "model": [MODEL, *SERVED],
    "prompt": ["\U0001f600\u00e9", " ", "\x00", [0], [257, 256, 0], [[0], [257]], ["a", "b", "c", "d"], "s" * 48],
    "messages": [[{"role": "user", "content": "\U0001f600"}], [{"role": "user", "content": []}] * 3],
    "max_tokens": [None, 0, 1, 8],
    "max_completion_tokens": [None, 1, 8],
    "temperature": [0, 0.0, 1e-300, 2, 2.0],
    "top_p": [1e-300, 1, 0.999],
    "n": [1, 4, 8],
    "stream": [True, False],
    "stream_options": [None, {}, {"include_usage": False}, {"include_usage": True}],
    "stop": [None, "", [], ["", "\n"], ["a", "b", "c", "d"], "\U0001f600"],
    "seed": [None, 0, -(2**63), 2**64 - 1],
    "logprobs": [None, 0, 20, True, False],
    "top_logprobs": [None, 0, 20],
    "echo": [True, False],
    "best_of": [None, 1, 8],
    "suffix": [None, ""],
    "logit_bias": [None, {}],
    "presence_penalty": [0, 0.0, -0.0],
    "frequency_penalty": [0, 0.0],
    "user": [None, "", "\U0001f600"],
    "name": ["gamma", "a" * 64, "A.b_c-9"],
    "path": [None, "alpha", "./beta", "deep/../alpha", "."],
}
# Every value a seed gives each field, and the edges: the mutator draws on them for valid combinations.
KNOWN: dict[str, list[Any]] = {key: list(values) for key, values in EDGES.items()}
for _body in COMPLETIONS + CHAT + LOADS:
    for _key, _value in _body.items():
        KNOWN.setdefault(_key, []).append(_value)


def _json(control: int, body: dict[str, Any]) -> bytes:
    return bytes([control]) + json.dumps(body).encode()


def seeds(targets: ServeTargets) -> list[tuple[str, bytes]]:
    """Valid and nearly valid requests for each target (after the selector byte): (target, bytes).

    Control 0: a valid key, JSON content type, one piece; 0x21 the same in chunks; 6 and 7 no
    key and a wrong one; 8 no content type.
    """
    out = [("serve_completions", _json(control, body)) for body in COMPLETIONS for control in (0, 0x21)]
    out += [("serve_chat", _json(control, body)) for body in CHAT for control in (0, 0x21)]
    out += [("serve_adapter_load", _json(control, body)) for body in LOADS for control in (0, 0x21)]
    out += [("serve_completions", _json(6, COMPLETIONS[0])), ("serve_chat", _json(8, CHAT[0]))]
    out += [
        ("serve_completions", b"\x00" + b"[" * 3000),
        ("serve_completions", b'\x00{"model": "tiny", "prompt": "\xff"}'),
    ]
    for name in NAMES:
        out += [("serve_adapter_get", b"\x00" + name), ("serve_adapter_delete", b"\x00" + name)]
    out += [("serve_adapter_delete", b"\x07alpha"), ("serve_adapter_load", _json(6, LOADS[0]))]
    return out
