"""What an adapter directory says about itself, for ``GET /v1/adapters/{name}`` (the playground's panels).

Training leaves beside the adapter its config (carrying ``softprompt_metrics``), ``metrics.json``,
``metrics.jsonl`` (a record per optimizer step and per evaluation) and a model card. They are read
here with size bounds, cut to what a client may see (no local paths) and thinned, so a long run's
curve stays a small response. A missing or unreadable file becomes null and a warning in the log,
never a failed request: adapters from PEFT or older runs hold only their config.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from huggingface_hub import metadata_load

from softprompt.core import run_files
from softprompt.core.adapter import CONFIG_NAME
from softprompt.core.card import CARD_NAME

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 1 << 20  # config, summary, card
MAX_RECORDS_BYTES = 32 << 20  # about 300,000 steps of records
MAX_POINTS = 400  # per curve (train steps, evaluations) sent to a client
RECORD_KEYS = ("step", "epoch", "loss", "eval_loss")


def adapter_details(directory: Path | None) -> dict[str, Any]:
    """``config``, ``metrics``, ``records`` and ``card`` (the card's YAML metadata) of one adapter."""
    if directory is None:  # a prompt given in memory: there is no directory to describe it
        return {"config": None, "metrics": None, "records": [], "card": None}
    metrics = _json(directory / run_files.METRICS)
    if isinstance(metrics, dict) and isinstance(metrics.get("config"), dict):
        metrics["config"] = {k: v for k, v in metrics["config"].items() if k != "output"}  # a server path
    return {
        "config": _json(directory / CONFIG_NAME),
        "metrics": metrics,
        "records": _records(directory / run_files.RECORDS),
        "card": _card(directory / CARD_NAME),
    }


def _json(path: Path) -> Any:
    text = _read(path, MAX_FILE_BYTES)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        log.warning("%s is not valid JSON: %s", path, exc)
        return None


def _records(path: Path) -> list[dict[str, Any]]:
    """Step and evaluation records with numbers only, each curve thinned to at most MAX_POINTS."""
    text = _read(path, MAX_RECORDS_BYTES)
    if text is None:
        return []
    steps, evals = [], []
    for line in text.splitlines():
        try:
            raw = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill mid-write; the others still draw a curve
        if not isinstance(raw, dict):
            continue
        record = {k: raw[k] for k in RECORD_KEYS if _number(raw.get(k))}
        if "loss" in record:
            steps.append(record)
        elif "eval_loss" in record:
            evals.append(record)
    return _thin(steps) + _thin(evals)


def _thin(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(records) <= MAX_POINTS:
        return records
    stride = math.ceil(len(records) / MAX_POINTS)
    kept = records[::stride]
    return kept if kept[-1] is records[-1] else kept + [records[-1]]


def _card(path: Path) -> dict[str, Any] | None:
    if _read(path, MAX_FILE_BYTES) is None:
        return None
    try:
        meta = metadata_load(path)
    except Exception as exc:  # malformed YAML in someone's card: show the adapter without it
        log.warning("cannot read the model card %s: %s", path, exc)
        return None
    return json.loads(json.dumps(meta, default=str)) if isinstance(meta, dict) else None


def _read(path: Path, limit: int) -> str | None:
    try:
        if not path.is_file():
            return None
        if path.stat().st_size > limit:
            log.warning("%s is larger than %d bytes; not read", path, limit)
            return None
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
