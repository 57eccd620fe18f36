"""CLI commands for measuring: ``eval``, ``compare`` and ``inspect``. Parse, call, print."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from softprompt.cli.args import add_config_args, config_from_args
from softprompt.cli.shown import shown_text
from softprompt.core import run_files

console = Console(stderr=False)


def _load_base(args: argparse.Namespace) -> Any:
    from softprompt.core.loading import load_base_model

    return load_base_model(args.model, trust_remote_code=args.trust_remote_code, device=args.device)


def cmd_eval(args: argparse.Namespace) -> int:
    from softprompt.measuring.evaluate import EvalConfig, evaluate_task

    config = config_from_args(EvalConfig, args)
    config.require_files()
    result = evaluate_task(_load_base(args), config)
    if args.json:
        console.print_json(json.dumps(result))
        return 0
    title = shown_text(f"eval: {result.get('task', config.data)} ({result['rows']} rows)", "table.title")
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if key not in ("members", "task") and isinstance(value, (int, float)):
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    for member in result.get("members", []):
        scores = f"accuracy {member['accuracy']:.4f}, macro-F1 {member['macro_f1']:.4f}"
        console.print(shown_text(f"  member {member['adapter']}:"), scores)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from softprompt.measuring.compare import CompareConfig, compare
    from softprompt.measuring.methods.run import RunSetup

    setup = config_from_args(RunSetup, args, model=args.model, device=args.device)
    report = compare(setup, config_from_args(CompareConfig, args))
    console.print(shown_text(Path(setup.output, run_files.REPORT_MD).read_text(encoding="utf-8")))
    for goal in report.goals:
        console.print(shown_text(f"goal: {goal.goal}: {goal.text}"))
    written = "report.md, report.json, report.png" + (", report.html" if report.kind == "text" else "")
    console.print("report written to", shown_text(setup.output, "bold"), f"({written})")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from softprompt.core.adapter import load_adapter
    from softprompt.measuring.inspect import inspect_prompts

    for path in args.adapters:  # before the model loads
        load_adapter(path)
    report = inspect_prompts(_load_base(args), args.adapters, top_k=args.top_k)
    if args.json:
        from dataclasses import asdict

        console.print_json(json.dumps(asdict(report)))
        return 0
    console.print(f"vocabulary embedding norm: {report.vocab_mean_norm:.3f} ± {report.vocab_norm_std:.3f}")
    for prompt in report.prompts:
        title = f"{prompt.adapter}: {prompt.kind} (mean norm {prompt.mean_norm:.3f})"
        table = Table(title=shown_text(title, "table.title"))
        if prompt.layer_norms is not None:
            shown = ", ".join(f"{n:.2f}" for n in prompt.layer_norms)
            console.print(shown_text(f"{prompt.adapter}:"), f"key/value norm per layer from its entry up: {shown}")
        table.add_column("#", justify="right")
        table.add_column("norm", justify="right")
        table.add_column(f"nearest {args.top_k} tokens (cosine)")
        for token in prompt.tokens:
            near = "  ".join(f"{text!r} {cos:.2f}" for text, cos in token.nearest)
            table.add_row(str(token.index), f"{token.norm:.3f}", shown_text(near))
        console.print(table)
    if len(report.prompts) > 1:
        sim = Table(title="cross-prompt similarity: pooled cosine / mean best-match token cosine")
        sim.add_column("")
        for i in range(len(report.prompts)):
            sim.add_column(str(i))
        for i, prompt in enumerate(report.prompts):
            cells = [f"{p:.2f} / {t:.2f}" for p, t in zip(report.pooled_similarity[i], report.token_similarity[i])]
            sim.add_row(shown_text(f"{i}: {prompt.adapter}"), *cells)
        console.print(sim)
    return 0


def add_commands(sub: Any, model_args: Any) -> None:
    """Register eval, compare and inspect on the main parser's subcommands."""
    from softprompt.measuring.compare import CompareConfig
    from softprompt.measuring.evaluate import EvalConfig
    from softprompt.measuring.methods.run import RunSetup

    ev = sub.add_parser("eval", help="accuracy / macro-F1 (rank classification) or perplexity of a model")
    model_args(ev)
    add_config_args(ev, EvalConfig)
    ev.add_argument("--json", action="store_true", help="print the result as JSON")
    ev.set_defaults(func=cmd_eval)

    cmp = sub.add_parser("compare", help="measure prompt engineering, prompt tuning, prefix, LoRA, fine-tuning")
    model_args(cmp)
    add_config_args(cmp, RunSetup, exclude=("model", "device"), output="softprompt-compare")
    add_config_args(cmp, CompareConfig)
    cmp.set_defaults(func=cmd_compare)

    ins = sub.add_parser("inspect", help="nearest tokens, norms and similarity of learned prompts")
    model_args(ins)
    ins.add_argument("adapters", nargs="+", help="adapter directories")
    ins.add_argument("--top-k", type=int, default=5, help="nearest tokens shown per virtual token")
    ins.add_argument("--json", action="store_true", help="print the result as JSON")
    ins.set_defaults(func=cmd_inspect)
