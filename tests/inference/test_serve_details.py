"""What an adapter directory says about itself (serve/details.py), at GET /v1/adapters/{name}: config, metrics,
training records (thinned) and card metadata; missing or damaged files are null, never a failed request."""

from __future__ import annotations

import json

import pytest
import torch
from fastapi.testclient import TestClient
from huggingface_hub import ModelCard

from softprompt.core.data import DataConfig
from softprompt.core.forms import Form, Prompt
from softprompt.core.prompt import PromptConfig
from softprompt.inference.engine import AdapterRegistry, Engine
from softprompt.inference.serve import ServeConfig, create_app
from softprompt.inference.serve.details import MAX_POINTS, adapter_details
from softprompt.training.train import TrainConfig, tune
from tests.inference.test_engine_registry import save_prompts


@pytest.fixture(scope="module")
def adapters(tiny_dirs, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    tune(
        str(tiny_dirs["llama"]),
        DataConfig(limit=12, eval_rows=4, max_length=24),
        PromptConfig(num_virtual_tokens=3, init="random"),
        TrainConfig(output=str(root / "trained"), epochs=2, batch_size=4, progress=False),
        device="cpu",
    )
    return root


@pytest.fixture
def client(llama, adapters):
    save_prompts(llama, adapters, ["bare"], tokens=2)  # config and weights only, as PEFT writes them
    registry = AdapterRegistry(llama, adapters)
    registry.scan()
    registry.add_embedding("in-memory", Prompt(Form.VECTORS, torch.zeros(5, llama.hidden_size)))
    with TestClient(create_app(Engine(llama, registry), ServeConfig(served_model_name="tiny"))) as c:
        yield c


def test_details_are_what_the_adapter_directory_holds(client, adapters):
    body = client.get("/v1/adapters/trained").json()
    directory = adapters / "trained"
    assert (body["id"], body["object"], body["parent"], body["num_virtual_tokens"]) == ("trained", "adapter", "tiny", 3)
    assert body["config"] == json.loads((directory / "adapter_config.json").read_text())
    metrics = json.loads((directory / "metrics.json").read_text())
    assert "output" in metrics["config"] and "output" not in body["metrics"]["config"], "no server paths"
    metrics["config"].pop("output")
    assert body["metrics"] == metrics
    lines = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in body["records"] if "loss" in r] == [r["loss"] for r in lines if "loss" in r]
    assert [(r["epoch"], r["eval_loss"]) for r in body["records"] if "eval_loss" in r] == [
        (r["epoch"], r["eval_loss"]) for r in lines if "eval_loss" in r
    ]
    assert body["card"] == ModelCard.load(directory / "README.md").data.to_dict()


def test_adapters_without_training_files_still_describe_themselves(client):
    bare = client.get("/v1/adapters/bare").json()
    assert bare["config"]["num_virtual_tokens"] == 2
    assert (bare["metrics"], bare["records"], bare["card"]) == (None, [], None)
    memory = client.get("/v1/adapters/in-memory").json()
    assert memory["num_virtual_tokens"] == 5 and memory["config"] is None


def test_unknown_and_invalid_names_are_openai_errors(client):
    missing = client.get("/v1/adapters/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    bad = client.get("/v1/adapters/.hidden")
    assert bad.status_code == 400 and "invalid adapter name" in bad.json()["error"]["message"]


def test_long_runs_are_thinned_and_damaged_files_do_not_fail_the_request(tmp_path):
    steps = [{"step": s, "epoch": 1, "loss": 1.0 / s, "lr": 0.1} for s in range(1, 5001)]
    lines = [json.dumps(r) for r in steps] + ['{"step": 5000, "epoch": 1, "eval_lo', json.dumps({"eval_loss": None})]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    (tmp_path / "metrics.json").write_text("{not json")
    (tmp_path / "README.md").write_text("---\n: [unbalanced\n---\n")
    details = adapter_details(tmp_path)
    kept = details["records"]
    assert len(kept) <= MAX_POINTS + 1 and kept[0]["step"] == 1 and kept[-1]["step"] == 5000
    assert all(set(r) == {"step", "epoch", "loss"} for r in kept)
    assert (details["config"], details["metrics"], details["card"]) == (None, None, None)
