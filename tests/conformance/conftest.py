"""Fixtures for the conformance matrix: one tiny model per family, saved once per session.

``SOFTPROMPT_TEST_DEVICE=cuda`` runs the matrix on a GPU (the models load there; inputs follow).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from softprompt.core.frozen import FrozenModel
from softprompt.core.loading import load_base_model
from tests.conformance.families import FAMILIES, save_tiny_family

DEVICE = os.environ.get("SOFTPROMPT_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def family_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("families")


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def family_dir(family_root: Path, family: str) -> Path:
    directory = family_root / family
    if not (directory / "config.json").is_file():
        save_tiny_family(family, directory)
    return directory


@pytest.fixture
def fbase(family_dir: Path) -> FrozenModel:
    """The family's tiny model, loaded the way users load theirs (load-time checks included)."""
    return load_base_model(str(family_dir), device=DEVICE)
