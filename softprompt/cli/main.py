"""Command line: parse, build configs, call the library, print. No logic of its own.

Every :class:`SoftPromptError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from softprompt.cli.args import add_config_args, config_from_args
from softprompt.cli.shown import shown_text
from softprompt.core.data import DataConfig
from softprompt.core.errors import SoftPromptError, TrainingInterrupted
from softprompt.core.loading import DEFAULT_MODEL
from softprompt.inference.generate import GenerateConfig, generate

console = Console(stderr=False)
Command = Callable[[argparse.Namespace], int]


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"built-in name ({DEFAULT_MODEL}), hub id, model directory or .gguf file (a .gguf is dequantized once "
        "and cached by its content in $SOFTPROMPT_CACHE or ~/.cache/softprompt; delete that folder to clear it)",
    )
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model's own Python code to run")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")


def cmd_train(args: argparse.Namespace) -> int:
    from softprompt.core.prompt import PromptConfig
    from softprompt.training import distributed
    from softprompt.training.train import TrainConfig, resume, tune

    try:  # under torchrun / accelerate launch, tune() and resume() join the process group
        if args.resume:
            result = resume(args.resume, device=args.device)
        else:
            result = tune(
                args.model,
                config_from_args(DataConfig, args),
                config_from_args(PromptConfig, args),
                config_from_args(TrainConfig, args),
                trust_remote_code=args.trust_remote_code,
                device=args.device,
            )
        if distributed.is_main():
            _print_metrics(result.metrics)
            console.print("adapter saved to", shown_text(result.output, "bold"))
    finally:
        distributed.shutdown()
    return 0


def _load_with_adapter(args: argparse.Namespace) -> Any:
    """The base model from --model with the adapter from --adapter (none when not given)."""
    from softprompt.core.prompted import SoftPromptModel

    return SoftPromptModel.from_pretrained(
        args.model,
        args.adapter,
        allow_base_mismatch=args.allow_base_mismatch,
        trust_remote_code=args.trust_remote_code,
        device=args.device,
    )


def cmd_generate(args: argparse.Namespace) -> int:
    model = _load_with_adapter(args)
    config = config_from_args(GenerateConfig, args)
    prompt = None if model.prompt is None else model.prompt.frozen()
    tuned = generate(model.base, args.prompts, prompt, config)
    if not args.side_by_side:
        for text in tuned:
            console.print(shown_text(text))
        return 0
    bare = generate(model.base, args.prompts, None, config)
    table = Table(show_lines=True)
    for title in ("prompt", "base model", shown_text(f"with {args.adapter}")):
        table.add_column(title, ratio=1)
    for row in zip(args.prompts, bare, tuned):
        table.add_row(*map(shown_text, row))
    console.print(table)
    return 0


class _DoSampleGone(argparse.Action):
    """``--do-sample`` went with the second temperature convention; an old command line learns what replaced it."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        parser.error("--do-sample is gone: --temperature above 0 samples, 0 (the default) is greedy, as in the server")


def cmd_export(args: argparse.Namespace) -> int:
    from softprompt.core.errors import ConfigError
    from softprompt.inference.export import ExportConfig, export_peft_prefix, export_prompt_embeds

    config = config_from_args(ExportConfig, args)  # validate before loading anything
    if config.to == "vllm-prompt-embeds" and args.prompt is None:
        raise ConfigError("--to vllm-prompt-embeds needs the request text (the file holds prompt + its tokens)")
    model = _load_with_adapter(args)
    if config.to == "peft-prefix":
        path = export_peft_prefix(model, config.output)
        console.print(shown_text(args.adapter), "as a PEFT prefix-tuning adapter saved to", shown_text(path, "bold"))
        return 0
    path = export_prompt_embeds(model, args.prompt, config)
    console.print(f"{config.to} for", shown_text(repr(args.prompt)), "saved to", shown_text(path, "bold"))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from softprompt.core.prompt import PromptConfig
    from softprompt.demo import DEMO_GENERATION, run_demo
    from softprompt.training.train import TrainConfig

    report = run_demo(
        model=args.model,
        data=config_from_args(DataConfig, args),
        prompt=config_from_args(PromptConfig, args),
        training=config_from_args(TrainConfig, args),
        generation=replace(DEMO_GENERATION, max_new_tokens=args.max_new_tokens),
        notify=lambda message: console.print(shown_text(message, "dim")),
    )
    table = Table(title=shown_text(f"Prompt: {report.query!r}", "table.title"), show_lines=True)
    table.add_column("before prompt tuning", ratio=1)
    table.add_column("after prompt tuning", ratio=1)
    table.add_row(shown_text(report.baseline), shown_text(report.tuned))
    console.print(table)
    _print_metrics(report.metrics)
    times = Table(title="wall time per stage")
    times.add_column("stage")
    times.add_column("seconds", justify="right")
    for stage, seconds in report.stage_seconds.items():
        times.add_row(stage, f"{seconds:.1f}")
    console.print(times)
    console.print(
        "adapter saved to", shown_text(report.adapter_dir, "bold"), "(metrics.json, loss_curve.png beside it)"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from softprompt.inference.engine import EngineConfig, RegistryConfig
    from softprompt.inference.serve import ServeConfig, serve
    from softprompt.inference.serve.config import API_KEY_ENV

    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    serve(
        args.model,
        args.adapters,
        config_from_args(ServeConfig, args, api_key=key),
        config_from_args(EngineConfig, args),
        config_from_args(RegistryConfig, args),
        device=args.device,
        trust_remote_code=args.trust_remote_code,
    )
    return 0


def cmd_library(args: argparse.Namespace) -> int:
    from pathlib import Path

    from softprompt.core.library import check_base, read_library
    from softprompt.core.loading import load_base_model

    found = read_library(args.directory)
    if args.model:
        check_base(found, load_base_model(args.model, trust_remote_code=args.trust_remote_code, device=args.device))
    table = Table("adapter", "task", "form", "entry layer", "tokens", "base model", "validation", title=args.directory)
    for prompt in found:
        row = prompt.describe(Path(args.directory))
        shown = {k: v for k, v in row["validation"].items() if k in ("val_accuracy", "val_ce", "val_bleu", "eval_loss")}
        scores = ", ".join(f"{k.removeprefix('val_').replace('eval_', '')} {v:.3g}" for k, v in sorted(shown.items()))
        table.add_row(
            row["adapter"], row["task"], row["form"], str(row["entry_layer"]), str(row["virtual_tokens"]),
            str(row["base_model"]), scores or "unrecorded",
        )  # fmt: skip
    console.print(table)
    return 0


def _print_metrics(metrics: dict) -> None:
    console.print(
        f"held-out loss: {metrics['heldout_loss_before']:.4f} -> {metrics['heldout_loss_after']:.4f} "
        f"({metrics['eval_rows']} rows) | {metrics['train_seconds']:.1f} s training, "
        f"{metrics['train_tokens_per_second']:.0f} tokens/s, batch {metrics['batch_size']}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="softprompt", description="Prompt tuning for frozen causal language models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True)
    from softprompt.core.prompt import PromptConfig
    from softprompt.training.train import TrainConfig

    train = sub.add_parser("train", help="tune a soft prompt on a dataset and save it as an adapter")
    _model_args(train)
    train.add_argument(
        "--resume",
        metavar="DIR",
        default=None,
        help="continue the interrupted run in DIR from its checkpoint (other options are taken from it)",
    )
    for cls in (DataConfig, PromptConfig, TrainConfig):
        add_config_args(train, cls)
    train.set_defaults(func=cmd_train)

    gen = sub.add_parser("generate", help="generate text, optionally with a tuned soft prompt")
    _model_args(gen)
    gen.add_argument("prompts", nargs="+", help="one or more prompts (batched together)")
    gen.add_argument("--adapter", default=None, help="adapter directory (softprompt or PEFT format)")
    gen.add_argument("--allow-base-mismatch", action="store_true", help="load an adapter trained on another base model")
    gen.add_argument("--side-by-side", action="store_true", help="also generate without the adapter and show both")
    add_config_args(gen, GenerateConfig)
    gen.add_argument("--do-sample", nargs=0, action=_DoSampleGone, help=argparse.SUPPRESS)
    gen.set_defaults(func=cmd_generate)

    export = sub.add_parser(
        "export", help="write what another tool needs: vLLM prompt_embeds, or any prompt as a PEFT prefix adapter"
    )
    _model_args(export)
    export.add_argument(
        "prompt", nargs="?", help="vllm-prompt-embeds: the request text; the file holds soft prompt + its embeddings"
    )
    export.add_argument("--adapter", required=True, help="adapter directory (softprompt or PEFT format)")
    export.add_argument("--allow-base-mismatch", action="store_true", help="load an adapter trained on another model")
    from softprompt.inference.export import ExportConfig

    add_config_args(export, ExportConfig)
    export.set_defaults(func=cmd_export)

    demo = sub.add_parser("demo", help="the whole walkthrough on the built-in model, offline")
    _model_args(demo)
    add_config_args(demo, DataConfig, limit=50)
    add_config_args(demo, PromptConfig)
    add_config_args(demo, TrainConfig, exclude=("model_dtype",), output="softprompt-demo")
    demo.add_argument("--max-new-tokens", type=int, default=48, help="tokens generated before and after")
    demo.set_defaults(func=cmd_demo)

    lib = sub.add_parser(
        "library", help="list a prompt library (a directory of adapters) that --init library:DIR starts prompts from"
    )
    lib.add_argument("directory", help="directory searched for soft-prompt adapters (compare's outputs are libraries)")
    lib.add_argument("--model", default=None, help="also check every prompt against this base model (loads it)")
    lib.add_argument("--trust-remote-code", action="store_true", help="allow the model's own Python code to run")
    lib.add_argument("--device", default=None, help="cpu, cuda, ... (with --model)")
    lib.set_defaults(func=cmd_library)

    from softprompt.inference.engine import EngineConfig, RegistryConfig
    from softprompt.inference.serve.config import ServeConfig

    srv = sub.add_parser("serve", help="OpenAI-compatible HTTP server for the base model and many adapters")
    _model_args(srv)
    srv.add_argument("--adapters", default=None, help="directory whose subdirectories are adapters (name = folder)")
    for serve_cls in (ServeConfig, EngineConfig, RegistryConfig):
        add_config_args(srv, serve_cls)
    srv.set_defaults(func=cmd_serve)

    from softprompt.cli.measure import add_commands

    add_commands(sub, _model_args)  # eval, compare, inspect
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    for noisy in ("httpx", "matplotlib", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args))
    except TrainingInterrupted as exc:
        print(f"softprompt: {exc}", file=sys.stderr)
        return 130
    except SoftPromptError as exc:
        print(f"softprompt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("softprompt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
