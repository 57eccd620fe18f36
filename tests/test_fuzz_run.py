"""The fuzz runner itself, and every input it ever found a bug with (fuzz/regressions/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz.run import main

REGRESSIONS = sorted((Path(__file__).parent.parent / "fuzz" / "regressions").glob("*.bin"))


@pytest.mark.parametrize("path", REGRESSIONS, ids=lambda p: p.stem)
def test_past_findings_stay_fixed(path):
    assert main(["--replay", str(path)]) == 0


def test_bounded_run_counts_inputs_and_exits_clean(tmp_path, capsys):
    code = main(["--engine", "mutate", "--runs", "60", "--seconds", "30", "--findings", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "inputs tried: 60 " in out and "uncaught exceptions: 0" in out
    assert not list(tmp_path.iterdir())
