"""The fuzz runner itself, and every input it ever found a bug with (fuzz/regressions/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz.run import main

REGRESSIONS = sorted((Path(__file__).parent.parent / "fuzz" / "regressions").glob("*.bin"))
CORE = [p for p in REGRESSIONS if not p.name.startswith("serve_")]
SERVE = [p for p in REGRESSIONS if p.name.startswith("serve_")]


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.stem)
def test_past_findings_stay_fixed(path):
    assert main(["--replay", str(path)]) == 0


def test_past_server_findings_stay_fixed(capsys):
    """Replayed by the target their file is named after, in one run (one server built)."""
    assert SERVE and main(["--replay", *map(str, SERVE)]) == 0, capsys.readouterr().out


def test_bounded_run_counts_inputs_and_exits_clean(tmp_path, capsys):
    code = main(["--engine", "mutate", "--runs", "150", "--seconds", "60", "--findings", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "inputs tried: 150 " in out and "uncaught exceptions: 0" in out
    assert "csv_file" in out and "serve_completions" in out  # the default is every target
    assert not list(tmp_path.iterdir())
