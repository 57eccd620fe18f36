"""Bounded fuzzing of softprompt's input handling (issue 6); it stops by itself.

    .venv/bin/python -m fuzz.run --seconds 60
    .venv/bin/python -m fuzz.run --seconds 1800 --corpus fuzz/corpus     # the longer job

Inputs go through fuzz/targets.py (CSV and JSONL datasets, templates, adapter weights and
config, JSON config/request bodies). The engine is atheris (coverage-guided libFuzzer over the
instrumented softprompt package) when it is installed, else a built-in random mutator of the
seed inputs. Anything but a one-line SoftPromptError is a finding: counted, its input and
traceback saved under --findings, and the run exits 1 when time is up. Exit 0 means none.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import FrameType

# Byte strings that matter to the parsers, inserted by the built-in mutator.
TOKENS = [
    b"{",
    b"}",
    b"{{",
    b'"',
    b",",
    b"\n",
    b"\r\n",
    b"\x00",
    b"\xff",
    b"\xc3",
    b"\xef\xbb\xbf",
    "\u2028".encode(),
    b"\x0c",
    b"NaN",
    b"-Infinity",
    b"-1",
    b"0",
    b"1e999",
    b"9" * 5000,
    b"[" * 3000,
    b"null",
    b"true",
    b'"x"',
    b"{}",
    b"[]",
    b".__class__",
    b"[0]",
    b"!r",
    b":>9",
    b'"F64"',
    b'"BF16"',
    b'"F8_E4M3"',
    b'"shape":[1,1]',
    b'"data_offsets":[0,4]',
]


class Stats:
    """Counts inputs per target and findings; decides when the run is over."""

    def __init__(self, names: list[str], seconds: float, runs: int, findings: Path) -> None:
        self.names = names
        self.deadline = time.monotonic() + seconds
        self.max_runs = runs
        self.findings_dir = findings
        self.inputs: Counter[str] = Counter()
        self.findings: Counter[str] = Counter()
        self.started = time.monotonic()

    def run(self, dispatch: Callable[[bytes], None], data: bytes) -> None:
        target = self.names[data[0] % len(self.names)] if data else "empty"
        self.inputs[target] += 1
        try:
            dispatch(data)
        except Exception as exc:  # the finding: anything a target lets escape
            self.record(target, data, exc)

    @property
    def over(self) -> bool:
        total = sum(self.inputs.values())
        return time.monotonic() >= self.deadline or (self.max_runs > 0 and total >= self.max_runs)

    def record(self, target: str, data: bytes, exc: Exception) -> None:
        frames = traceback.extract_tb(exc.__traceback__)
        ours = [f for f in frames if "softprompt" in f.filename] or frames
        where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
        signature = f"{target} {type(exc).__name__} at {where}"
        self.findings[signature] += 1
        if self.findings[signature] == 1:
            print(f"FINDING {signature}: {str(exc)[:200]!r}", file=sys.stderr, flush=True)
            self.findings_dir.mkdir(parents=True, exist_ok=True)
            stem = f"{target}-{type(exc).__name__}-{hashlib.sha1(data).hexdigest()[:12]}"
            (self.findings_dir / f"{stem}.bin").write_bytes(data)
            (self.findings_dir / f"{stem}.txt").write_text("".join(traceback.format_exception(exc)))

    def report(self) -> int:
        total = sum(self.inputs.values())
        seconds = time.monotonic() - self.started
        per_target = ", ".join(f"{name} {self.inputs[name]}" for name in self.names)
        print(f"inputs tried: {total} in {seconds:.0f} s ({per_target})", flush=True)
        print(f"uncaught exceptions: {sum(self.findings.values())} ({len(self.findings)} distinct)", flush=True)
        for signature, count in self.findings.most_common():
            print(f"  {count:6d}  {signature}", flush=True)
        return 1 if self.findings else 0


def mutate(data: bytes, pool: list[bytes], rng: random.Random, max_len: int) -> bytes:
    """A few random edits; byte 0 (the target selector) is left alone."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randint(1, max(1, len(buf)))
        op = rng.randrange(6)
        if op == 0 and len(buf) > 1:
            buf[rng.randrange(1, len(buf))] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos:pos] = rng.choice(TOKENS)
        elif op == 2:
            del buf[pos : pos + rng.randint(1, 32)]
        elif op == 3:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 4:
            other = rng.choice(pool)
            buf[pos:] = other[rng.randint(1, max(1, len(other))) :]
        else:
            chunk = bytes(buf[pos : pos + rng.randint(1, 32)])
            buf[pos:pos] = chunk * rng.randint(1, 16)
    return bytes(buf[:max_len])


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise TimeoutError("input took longer than --timeout seconds")


def run_mutator(
    stats: Stats, dispatch: Callable[[bytes], None], pool: list[bytes], args: argparse.Namespace, work: Path
) -> None:
    rng = random.Random(args.seed)
    signal.signal(signal.SIGALRM, _alarm)
    for data in pool:  # every seed once, unmutated
        stats.run(dispatch, data)
    while not stats.over:
        signal.alarm(args.timeout)
        stats.run(dispatch, mutate(rng.choice(pool), pool, rng, args.max_len))
        signal.alarm(0)


def run_atheris(
    stats: Stats, dispatch: Callable[[bytes], None], pool: list[bytes], args: argparse.Namespace, work: Path
) -> None:
    import atheris

    corpus = Path(args.corpus) if args.corpus else work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for data in pool:
        (corpus / f"seed-{hashlib.sha1(data).hexdigest()[:12]}").write_bytes(data)

    def one_input(data: bytes) -> None:
        stats.run(dispatch, data)
        if stats.over:  # libFuzzer never returns and skips atexit: report and leave from here
            code = stats.report()
            shutil.rmtree(work, ignore_errors=True)
            sys.stdout.flush()
            os._exit(code)

    flags = [f"-max_len={args.max_len}", f"-timeout={args.timeout}", "-rss_limit_mb=4096", f"-seed={args.seed + 1}"]
    atheris.Setup([sys.argv[0], *flags, *args.libfuzzer, str(corpus)], one_input)
    atheris.Fuzz()


def replay(files: list[str]) -> int:
    """Run saved inputs (fuzz/findings/*.bin) once each, with full tracebacks; exit 1 if any fails."""
    from fuzz.targets import Targets

    work = Path(tempfile.mkdtemp(prefix="softprompt-fuzz-"))
    try:
        targets, failed = Targets(work), 0
        for name in files:
            try:
                targets.dispatch(Path(name).read_bytes())
                print(f"ok      {name}")
            except Exception:
                failed += 1
                print(f"FAILED  {name}\n{traceback.format_exc()}")
        return 1 if failed else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="stop after this long (default 60)")
    parser.add_argument("--runs", type=int, default=0, help="stop after this many inputs (0: no limit)")
    parser.add_argument("--engine", choices=["auto", "atheris", "mutate"], default="auto")
    parser.add_argument("--corpus", default=None, help="atheris corpus directory to keep (default: a temp dir)")
    parser.add_argument("--findings", default="fuzz/findings", help="where crashing inputs are saved")
    parser.add_argument("--max-len", type=int, default=8192, help="largest input in bytes")
    parser.add_argument("--timeout", type=int, default=30, help="seconds one input may take")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--libfuzzer", action="append", default=[], metavar="FLAG", help="extra libFuzzer flag, e.g. -len_control=0"
    )
    parser.add_argument("--replay", nargs="+", metavar="FILE", help="run these saved inputs once each, then stop")
    args = parser.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            engine = "mutate"
    print(f"engine: {engine}", flush=True)
    if engine == "atheris":
        import atheris

        with atheris.instrument_imports(include=["softprompt"]):
            from fuzz.targets import Targets, seeds
    else:
        from fuzz.targets import Targets, seeds

    work = Path(tempfile.mkdtemp(prefix="softprompt-fuzz-"))
    try:
        targets = Targets(work)
        stats = Stats([fn.__name__ for fn in targets.all], args.seconds, args.runs, Path(args.findings))
        (run_atheris if engine == "atheris" else run_mutator)(stats, targets.dispatch, seeds(targets), args, work)
        return stats.report()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
