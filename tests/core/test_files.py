"""Files written whole or not at all, with the mode a plain write would give."""

import os
import stat

import pytest
import torch

from softprompt.core.adapter import CONFIG_NAME, WEIGHTS_NAME, AdapterConfig, save_adapter
from softprompt.core.forms import Form, Prompt


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_get_the_mode_the_umask_allows(tmp_path, umask):
    """Atomic writes must not make adapters private: a server under another account reads them."""
    old = os.umask(umask)
    try:
        prompt = Prompt(Form.VECTORS, torch.randn(3, 8))
        directory = save_adapter(tmp_path / "a", prompt, AdapterConfig(num_virtual_tokens=3, token_dim=8))
    finally:
        os.umask(old)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o666 & ~umask
