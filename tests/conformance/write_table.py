"""Write docs/architectures.md from a run of the conformance tests (never typed by hand).

    .venv/bin/python -m tests.conformance.write_table

Runs ``pytest tests/conformance`` with a JUnit XML report and turns every test result into a cell:
one row per family, one column per invariant. A failing cell is written as failing, never skipped.
"""

from __future__ import annotations

import platform
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import transformers
from transformers import AutoModelForCausalLM

from softprompt.core.family import read_family
from tests.conformance.families import FAMILIES, REFUSED, tiny_config

OUTPUT = Path("docs/architectures.md")
# The same tests run on a GPU (SOFTPROMPT_TEST_DEVICE=cuda pytest tests/conformance --junitxml=...), kept as run.
CUDA_REPORT = Path("docs/conformance-cuda.xml")
COMMAND = ".venv/bin/python -m tests.conformance.write_table"
MATRIX = "tests.conformance.test_matrix"
COLUMNS = {  # test function -> column title
    "test_text_init_equals_the_same_text_as_a_hard_prompt": "text init = hard prompt",
    "test_left_padded_batch_equals_each_row_alone": "batched = alone",
    "test_cached_greedy_generation_equals_no_cache_recomputation": "cached = no-cache generation",
    "test_every_training_layout_gives_the_plain_loss_and_gradient": "layouts = plain",
    "test_peft_adapters_load_both_ways_with_equal_logits": "PEFT both ways",
    "test_engine_mixed_adapter_batch_equals_each_row_alone": "engine mixed batch = alone",
    "test_rank_classification_through_the_engine_equals_the_model_path": "engine scoring = model path",
    "test_training_lowers_the_loss_and_leaves_the_base_bit_identical": "trains, base bit-identical",
    "test_deep_and_late_text_inits_equal_the_text_as_a_hard_prompt": "deep/late text init = hard prompt",
    "test_a_deep_prompt_equals_its_keys_and_values_given_by_hand_as_a_cache": "deep = its keys/values as a cache",
    "test_late_prompts_reusing_the_frozen_layers_equal_them_run_in_full": "late with reuse = without",
    "test_engine_batch_mixing_every_form_equals_each_row_alone": "engine, every form mixed = alone",
    "test_peft_prefix_adapters_load_both_ways_with_equal_logits": "PEFT prefix both ways",
}
MARK = {"passed": "pass", "failed": "**FAIL**", "skipped": "skip"}


def run_tests(report: Path) -> int:
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests/conformance",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={report}",
    ]
    return subprocess.run(command, check=False).returncode


def results(report: Path) -> dict[str, dict[str, str]]:
    """{classname.test: {param: outcome}} from the JUnit XML."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for case in ET.parse(report).getroot().iter("testcase"):
        match = re.fullmatch(r"(\w+)(?:\[(.+)\])?", case.get("name", ""))
        if not match:
            continue
        outcome = "passed"
        if case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
        elif case.find("skipped") is not None:
            outcome = "skipped"
        out[f"{case.get('classname')}.{match.group(1)}"][match.group(2) or ""] = outcome
    return out


def matrix_table(found: dict[str, dict[str, str]], cuda: dict[str, dict[str, str]] | None) -> list[str]:
    on_cuda = [test for test in COLUMNS if cuda and f"{MATRIX}.{test}" in cuda]  # the invariants that run had
    extra = [f"on CUDA: the {len(on_cuda)} it ran"] if cuda else []
    lines = ["| family | packed layout | " + " | ".join([*COLUMNS.values(), *extra]) + " |"]
    lines.append("|---" * (len(COLUMNS) + 2 + len(extra)) + "|")
    layouts = found.get(f"{MATRIX}.test_every_training_layout_gives_the_plain_loss_and_gradient", {})
    for family in FAMILIES:
        packable = read_family(AutoModelForCausalLM.from_config(tiny_config(family))).packable
        packed = "yes" if packable else "no (shared)"
        cells = [MARK.get(found.get(f"{MATRIX}.{test}", {}).get(family, ""), "not run") for test in COLUMNS]
        if cuda:
            outcomes = {cuda.get(f"{MATRIX}.{test}", {}).get(family, "not run") for test in on_cuda}
            cells.append("pass" if outcomes == {"passed"} else "**FAIL**" if "failed" in outcomes else "not run")
        lines.append(f"| {family} | {packed if layouts else '?'} | " + " | ".join(cells) + " |")
    return lines


def other_tests(found: dict[str, dict[str, str]], module: str) -> list[str]:
    lines = []
    for key, outcomes in sorted(found.items()):
        if key.startswith(f"tests.conformance.{module}."):
            name = key.rsplit(".", 1)[1].removeprefix("test_").replace("_", " ")
            cells = ", ".join(f"{param or 'all'}: {MARK[o]}" for param, o in sorted(outcomes.items()))
            lines.append(f"- {name}: {cells}")
    return lines


def cuda_line(report: Path) -> list[str]:
    suite = ET.parse(report).getroot().find("testsuite")
    if suite is None:
        return []
    counts = {key: int(suite.get(key, "0")) for key in ("tests", "failures", "errors", "skipped")}
    return [
        f"The last column is the same tests run on a GPU ({report}, {suite.get('timestamp', '')[:10]}: "
        f"{counts['tests']} tests, {counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped; "
        "one NVIDIA H200, torch 2.11 + CUDA 13, transformers 5.24), with "
        "`SOFTPROMPT_TEST_DEVICE=cuda pytest tests/conformance --junitxml=docs/conformance-cuda.xml`.",
        "",
    ]


def write(found: dict[str, dict[str, str]], code: int) -> str:
    refused = [f"| {family} | {why} |" for family, why in REFUSED.items()]
    cuda = results(CUDA_REPORT) if CUDA_REPORT.is_file() else None
    return "\n".join(
        [
            "# Architectures: the conformance matrix",
            "",
            f"Written by `{COMMAND}` from the results of `pytest tests/conformance` (do not edit by hand).",
            f"transformers {transformers.__version__}, Python {platform.python_version()}; pytest exit code {code}.",
            "",
            "Every family is a tiny random-weight model built from its config in-process "
            "(tests/conformance/families.py: 2 layers, hidden 32), with the family's quirks switched on "
            "(Gemma's scaled embeddings and soft-capped logits, Granite's multipliers, Cohere's logit scale, "
            "sliding windows on Gemma 2/3). Each cell is one test (tests/conformance/test_matrix.py).",
            "",
            *matrix_table(found, cuda),
            "",
            *(cuda_line(CUDA_REPORT) if cuda else []),
            "`packed layout`: whether training runs padding-free (softprompt.core.family.PACKABLE); the others "
            "train with the prompt's keys/values shared (or injected into every row where a sliding window "
            "requires it). Models of other families load when the load-time checks pass "
            "(softprompt.core.refusals) and get a warning that they are outside this matrix.",
            "",
            "## Sliding windows (tests/conformance/test_windows.py, window 16)",
            *other_tests(found, "test_windows"),
            "",
            "## Refused families (tests/conformance/test_refusals.py)",
            "Loading one of these fails at once with a one-line error naming the family and the reason:",
            "",
            "| family | why |",
            "|---|---|",
            *refused,
            "",
            *other_tests(found, "test_refusals"),
            "",
            "Families not in either list were not tried: the pinned transformers has about 190 causal-LM "
            "families; the matrix covers the decoder-only ones that users most often prompt-tune and that "
            "build small on a CPU.",
            "",
        ]
    )


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "conformance.xml"
        code = run_tests(report)
        OUTPUT.write_text(write(results(report), code), encoding="utf-8")
    print(f"wrote {OUTPUT} (pytest exit code {code})")
    return code


if __name__ == "__main__":
    sys.exit(main())
