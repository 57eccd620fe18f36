"""Files on disk: written whole or not at all, and named inputs that must exist before any work starts.

Every file softprompt writes (adapters, checkpoints, metrics, reports, caches) goes through
:func:`atomic_paths`: written in full beside its target, synced, then renamed over it, so a crash
or a full disk leaves the old file (or none), never half of one. :func:`require_file` and
:func:`require_dir` check what a command was given before it loads a model: a typo should cost a
second, not the minutes a 7B model takes to load.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from softprompt.core.errors import SoftPromptError


def require_file(path: str | Path, what: str, error: type[SoftPromptError]) -> Path:
    """``path`` as a Path if it is a readable file, else ``error`` naming ``what`` (an option) and the path."""
    found = Path(path).expanduser()
    if not found.is_file():
        raise error(f"{what} {'is a directory, not a file' if found.is_dir() else 'not found'}: {found}")
    return found


def require_dir(path: str | Path, what: str, error: type[SoftPromptError]) -> Path:
    """``path`` as a Path if it is a directory, else ``error`` naming ``what`` (an option) and the path."""
    found = Path(path).expanduser()
    if not found.is_dir():
        raise error(f"{what} {'is a file, not a directory' if found.exists() else 'not found'}: {found}")
    return found


def write_json(path: Path, payload: Any) -> None:
    """Atomically write JSON; non-finite floats become null so every reader can parse it."""
    text = json_text(payload)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def json_text(payload: Any) -> str:
    return json.dumps(_finite(payload), indent=2, sort_keys=False) + "\n"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temp path beside ``target``; rename it over ``target`` only if the block succeeds."""
    with atomic_paths(target) as (tmp,):
        yield tmp


def _new_temp_file(target: Path) -> Path:
    """Create an empty temp file beside ``target`` with the mode a plain ``open`` would give.

    ``tempfile.mkstemp`` creates files 0600, which made every adapter and report unreadable to
    the other users of a shared machine (a server running under its own account, say).
    """
    while True:
        path = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies
            return path
        except FileExistsError:
            continue


@contextmanager
def atomic_paths(*targets: Path) -> Iterator[tuple[Path, ...]]:
    """Yield temp paths beside ``targets``; if the block succeeds, sync all, then rename each in order.

    Nothing is renamed until every file is complete, so a failure while writing leaves all
    targets as they were; the temp files are removed whatever happens.
    """
    tmps: list[Path] = []
    try:
        for target in targets:
            tmps.append(_new_temp_file(target))
        modes = [stat.S_IMODE(tmp.stat().st_mode) for tmp in tmps]
        yield tuple(tmps)
        for tmp, mode in zip(tmps, modes):
            os.chmod(tmp, mode)  # writers that replace the file (safetensors does) leave it 0600
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        for tmp, target in zip(tmps, targets):
            os.replace(tmp, target)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
