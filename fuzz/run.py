"""Bounded fuzzing of softprompt's input handling (issues 6 and 27); it stops by itself.

    .venv/bin/python -m fuzz.run --seconds 60
    .venv/bin/python -m fuzz.run --seconds 1800 --corpus fuzz/corpus     # the longer job
    nice -n 19 .venv/bin/python -m fuzz.run --targets serve --engine mutate --inputs 1000000 --seconds 7200

Inputs go through fuzz/targets.py (``--targets core``: CSV and JSONL datasets, templates, adapter
weights and config, JSON config bodies) and fuzz/serve_targets.py (``--targets serve``: request
bodies of every server endpoint, through the real ASGI app). The engine is atheris
(coverage-guided libFuzzer over the instrumented softprompt package) when it is installed, else
a built-in random mutator of the seed inputs, JSON-structure-aware for the server's bodies, that
keeps inputs with a new kind of answer as seeds. Anything but a one-line SoftPromptError (core)
or a clean answer below 500 (serve) is a finding: counted, its input and traceback saved under
--findings, and the run exits 1 when it is over. Exit 0 means none.
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
from typing import Any

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
        self.slowest: dict[str, float] = {}
        self.statuses: Counter[tuple[str, int]] = Counter()  # the server targets' answers
        self.started = time.monotonic()

    def run(self, dispatch: Callable[[bytes], Any], data: bytes) -> Any:
        """Run one input; returns what the target returned (its kind of answer), None after a finding."""
        target = self.names[data[0] % len(self.names)] if data else "empty"
        self.inputs[target] += 1
        if self.inputs.total() % PROGRESS_EVERY == 0:
            seconds = time.monotonic() - self.started
            found = sum(self.findings.values())
            print(f"... {self.inputs.total()} inputs in {seconds:.0f} s, {found} findings", flush=True)
        start = time.perf_counter()
        try:
            outcome = dispatch(data)
            if isinstance(outcome, tuple) and outcome and isinstance(outcome[0], int):
                self.statuses[target, outcome[0]] += 1
            return outcome
        except Exception as exc:  # the finding: anything a target lets escape
            self.record(target, data, exc)
            return None
        finally:
            took = time.perf_counter() - start
            if took > self.slowest.get(target, 0.0):
                self.slowest[target] = took

    @property
    def over(self) -> bool:
        total = sum(self.inputs.values())
        return time.monotonic() >= self.deadline or (self.max_runs > 0 and total >= self.max_runs)

    def record(self, target: str, data: bytes, exc: Exception) -> None:
        frames = traceback.extract_tb(exc.__traceback__)
        ours = [f for f in frames if "softprompt" in f.filename] or frames
        where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
        signature = f"{target} {type(exc).__name__} at {where}"
        if getattr(exc, "kind", None):  # the server targets' BadAnswer: which rule the answer broke
            signature += f" ({exc.kind})"  # type: ignore[attr-defined]
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
        print(f"inputs per second: {total / max(seconds, 1e-9):.0f}", flush=True)
        slowest = ", ".join(f"{name} {self.slowest.get(name, 0.0) * 1000:.0f}" for name in self.names)
        print(f"slowest input per target, ms: {slowest}", flush=True)
        for name in self.names:
            answers = sorted((status, n) for (target, status), n in self.statuses.items() if target == name)
            if answers:
                print(f"  {name} answers: " + ", ".join(f"{status} x{n}" for status, n in answers), flush=True)
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


PROGRESS_EVERY = 100_000  # inputs between progress lines
MAX_POOL = 5_000  # per target: seeds plus the inputs kept for a new kind of answer


class Suite:
    """The selected target groups as one list: ``data[0]`` picks a target, the rest is its input."""

    def __init__(self, which: str, work: Path) -> None:
        from fuzz.targets import Targets, seeds

        self.groups: list[Any] = []
        self.pool: list[bytes] = []
        self.all: list[Callable[[bytes], Any]] = []
        self.mutators: dict[int, Callable[[bytes, random.Random], bytes | None]] = {}
        if which in ("core", "all"):
            core = Targets(work)
            self.all += core.all
            self.pool += seeds(core)  # their first byte is already the index in core.all, which comes first
        if which in ("serve", "all"):
            from fuzz import serve_targets

            serve = serve_targets.ServeTargets(work)
            self.groups.append(serve)
            offset = len(self.all)
            self.all += serve.all
            index = {fn.__name__: offset + i for i, fn in enumerate(serve.all)}
            self.pool += [bytes([index[name]]) + data for name, data in serve_targets.seeds(serve)]
            self.mutators.update({i: serve.mutate for i in index.values()})
        self.names = [fn.__name__ for fn in self.all]

    def dispatch(self, data: bytes) -> Any:
        if data:
            return self.all[data[0] % len(self.all)](data[1:])
        return None

    def mutate(self, data: bytes, pool: list[bytes], rng: random.Random, max_len: int) -> bytes:
        """Mostly a structure-aware edit where the target has one (sometimes byte edits on top), else byte edits."""
        structured = self.mutators.get(data[0] % len(self.all)) if data else None
        if structured is not None and rng.random() < 0.85:
            out = structured(data[1:], rng)
            if out is not None:
                out = data[:1] + out
                return mutate(out, pool, rng, max_len) if rng.random() < 0.1 else out[:max_len]
        return mutate(data, pool, rng, max_len)

    def close(self) -> None:
        for group in self.groups:
            group.close()


def run_mutator(stats: Stats, suite: Suite, args: argparse.Namespace, work: Path) -> None:
    """Random edits of the seeds, each target as often; an input whose answer is of a kind not seen
    before for its target becomes a seed too (a cheap feedback where coverage is not measured)."""
    rng = random.Random(args.seed)
    signal.signal(signal.SIGALRM, _alarm)
    pools: dict[int, list[bytes]] = {}
    seen: set[tuple[int, Any]] = set()
    for data in suite.pool:  # every seed once, unmutated (as far as --runs allows)
        target = data[0] % len(suite.all)
        pools.setdefault(target, []).append(data)
        if not stats.over:
            seen.add((target, stats.run(suite.dispatch, data)))
    targets = sorted(pools)
    originals = {target: len(pool) for target, pool in pools.items()}
    while not stats.over:
        target = rng.choice(targets)
        pool = pools[target]
        # Half from the seeds themselves: the kept inputs are mostly refusals, and valid bodies
        # are what reach generation.
        start = pool[rng.randrange(originals[target])] if rng.random() < 0.5 else rng.choice(pool)
        data = suite.mutate(start, suite.pool, rng, args.max_len)
        signal.alarm(args.timeout)
        outcome = stats.run(suite.dispatch, data)
        signal.alarm(0)
        if outcome is not None and (target, outcome) not in seen and len(pools[target]) < MAX_POOL:
            seen.add((target, outcome))
            pools[target].append(data)


def run_atheris(stats: Stats, suite: Suite, args: argparse.Namespace, work: Path) -> None:
    import atheris

    dispatch, pool = suite.dispatch, suite.pool
    corpus = Path(args.corpus) if args.corpus else work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for data in pool:
        (corpus / f"seed-{hashlib.sha1(data).hexdigest()[:12]}").write_bytes(data)

    def one_input(data: bytes) -> None:
        stats.run(dispatch, data)
        if stats.over:  # libFuzzer never returns and skips atexit: report and leave from here
            code = stats.report()
            suite.close()
            shutil.rmtree(work, ignore_errors=True)
            sys.stdout.flush()
            os._exit(code)

    flags = [f"-max_len={args.max_len}", f"-timeout={args.timeout}", "-rss_limit_mb=4096", f"-seed={args.seed + 1}"]
    rng = random.Random(args.seed)

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        if data and (data[0] % len(suite.all)) in suite.mutators and rng.random() < 0.5:
            out = suite.mutators[data[0] % len(suite.all)](data[1:], rng)
            if out is not None:
                return (data[:1] + out)[:max_size]
        return bytes(atheris.Mutate(data, max_size))

    custom = custom_mutator if suite.mutators else None
    atheris.Setup([sys.argv[0], *flags, *args.libfuzzer, str(corpus)], one_input, custom_mutator=custom)
    atheris.Fuzz()


def replay(files: list[str]) -> int:
    """Run saved inputs (fuzz/findings/*.bin) once each, with full tracebacks; exit 1 if any fails.

    A file saved by this runner is named after its target (``TARGET-Error-hash.bin``): that target
    gets the input after its first byte, whatever --targets the run had. Other files go by their
    first byte over the core targets.
    """
    work = Path(tempfile.mkdtemp(prefix="softprompt-fuzz-"))
    serve = {Path(name).name.startswith("serve_") for name in files}
    suite = Suite("all" if len(serve) == 2 else "serve" if True in serve else "core", work)
    try:
        failed = 0
        by_name = dict(zip(suite.names, suite.all, strict=True))
        for name in files:
            data = Path(name).read_bytes()
            target = by_name.get(Path(name).name.split("-")[0])
            try:
                if target is not None and data:
                    target(data[1:])
                else:
                    suite.dispatch(data)
                print(f"ok      {name}")
            except Exception:
                failed += 1
                print(f"FAILED  {name}\n{traceback.format_exc()}")
        return 1 if failed else 0
    finally:
        suite.close()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="stop after this long (default 60)")
    parser.add_argument("--runs", "--inputs", type=int, default=0, help="stop after this many inputs (0: no limit)")
    parser.add_argument(
        "--targets",
        choices=["core", "serve", "all"],
        default="all",
        help="core: datasets, templates, adapters, configs; serve: the server's request bodies; all: both (default)",
    )
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
            import fuzz.serve_targets  # noqa: F401
            import fuzz.targets  # noqa: F401

    work = Path(tempfile.mkdtemp(prefix="softprompt-fuzz-"))
    suite = Suite(args.targets, work)
    print(f"targets: {', '.join(suite.names)}", flush=True)
    try:
        stats = Stats(suite.names, args.seconds, args.runs, Path(args.findings))
        (run_atheris if engine == "atheris" else run_mutator)(stats, suite, args, work)
        return stats.report()
    finally:
        suite.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
