"""The OpenAI-compatible HTTP app: routes only; the work is in :mod:`softprompt.inference.serve.service`.

Routes: ``GET /`` (the playground page, :mod:`softprompt.inference.serve.playground`), ``GET /health``,
``GET /metrics``, ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``,
``GET /v1/adapters/{name}`` (read-only: card data, metrics, training records), and with
``--enable-adapter-admin`` ``POST /v1/adapters`` and ``DELETE /v1/adapters/{name}``. Middleware,
outermost first: request metrics, the drain gate (503 once stopping), the API key (401), the
body size limit (413).
"""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from softprompt.core.errors import AdapterError, AdapterNameError, BaseModelMismatchError, UnknownAdapterError
from softprompt.inference.engine import Engine
from softprompt.inference.engine.registry import check_name
from softprompt.inference.serve import errors, playground
from softprompt.inference.serve.auth import ApiKeyAuth
from softprompt.inference.serve.config import ServeConfig
from softprompt.inference.serve.drain import DrainGate
from softprompt.inference.serve.errors import APIError
from softprompt.inference.serve.formats import model_card
from softprompt.inference.serve.limits import BodyLimit
from softprompt.inference.serve.metrics import Metrics, RequestMetrics
from softprompt.inference.serve.schemas import AdapterLoad, ChatRequest, CompletionRequest
from softprompt.inference.serve.service import Service

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

router = APIRouter()


def create_app(engine: Engine, config: ServeConfig | None = None) -> FastAPI:
    service = Service(engine, config or ServeConfig())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.worker.start()
        yield
        service.worker.stop()

    app = FastAPI(title="softprompt", lifespan=lifespan)
    app.state.service = service
    errors.install(app)
    app.include_router(router)
    playground.install(app)
    # Each add wraps the previous ones: the last added runs first.
    app.add_middleware(BodyLimit, limit=service.config.max_body_bytes)
    app.add_middleware(ApiKeyAuth, key=service.config.api_key)
    app.add_middleware(DrainGate, drain=service.drain)
    app.add_middleware(RequestMetrics, metrics=service.metrics, routes=router.routes)
    return app


def _service(request: Request) -> Service:
    return request.app.state.service


@router.get("/health")
def health(request: Request) -> JSONResponse:
    """200 while serving; 503 once draining, so a load balancer stops sending new requests."""
    service = _service(request)
    engine = service.engine
    draining = service.drain.draining
    body = {
        "status": "draining" if draining else "ok",
        "model": service.model_name,
        "adapters": len(engine.registry.names()),
        "active_requests": service.worker.active,
        "running": len(engine.scheduler.running),
        "waiting": len(engine.scheduler.waiting),
    }
    return JSONResponse(body, status_code=503 if draining else 200)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    return Response(_service(request).metrics.render(), media_type=Metrics.content_type)


@router.get("/v1/models")
def models(request: Request) -> dict:
    return _service(request).models()


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> JSONResponse | StreamingResponse:
    return await _respond(_service(request), body, chat=False)


@router.post("/v1/chat/completions", response_model=None)
async def chat(body: ChatRequest, request: Request) -> JSONResponse | StreamingResponse:
    return await _respond(_service(request), body, chat=True)


@router.post("/v1/adapters", status_code=201)
def load_adapter(body: AdapterLoad, request: Request) -> dict:
    service = _admin(request)
    if body.name == service.model_name:
        raise APIError(400, f"{body.name!r} is the base model's name", param="name")
    try:
        service.engine.registry.add(check_name(body.name), body.path)
    except BaseModelMismatchError as exc:
        raise APIError(400, str(exc), param="path", code="base_model_mismatch") from exc
    except AdapterNameError as exc:
        raise APIError(400, str(exc), param="name") from exc
    except AdapterError as exc:
        raise APIError(400, str(exc), param="path") from exc
    return model_card(body.name, service.created, service.model_name)


@router.get("/v1/adapters/{name}")
def adapter(name: str, request: Request) -> dict:
    return _service(request).adapter(check_name(name))


@router.delete("/v1/adapters/{name}")
def unload_adapter(name: str, request: Request) -> dict:
    service = _admin(request)
    try:
        service.engine.registry.remove(check_name(name))
    except UnknownAdapterError as exc:
        raise APIError(404, str(exc), param="name", code="model_not_found") from exc
    except AdapterError as exc:
        raise APIError(400, str(exc), param="name") from exc
    return {"id": name, "object": "model", "deleted": True}


async def _respond(
    service: Service, body: CompletionRequest | ChatRequest, chat: bool
) -> JSONResponse | StreamingResponse:
    job, slots = service.start(body)
    if not body.stream:
        return JSONResponse(await service.complete(job, slots, body.model, chat))
    events = service.stream(job, slots, body.model, chat, body.include_usage)
    # If the response is dropped before its body starts (client gone at once), free the slot anyway.
    weakref.finalize(events, slots.release)
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)


def _admin(request: Request) -> Service:
    service = _service(request)
    if not service.config.enable_adapter_admin:
        raise APIError(
            403, "adapter management is off on this server; start it with --enable-adapter-admin (and --api-key)"
        )
    return service
