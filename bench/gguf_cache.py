"""Your own ``.gguf`` file: its first load (dequantize, then cache) against the second (the cache), one process each.

Each load runs in a fresh process, as ``softprompt train`` then ``softprompt eval`` would: the
time is ``load_base_model(path)`` inside it (imports not counted). The file is a copy of the
built-in SmolLM2-135M GGUF under another name, so nothing but the content-hash cache can serve it,
and the cache directory starts empty. A third load after the file changes (one byte appended,
which gguf ignores) must dequantize again.

    .venv/bin/python bench/gguf_cache.py
    .venv/bin/python bench/gguf_cache.py --gguf /path/to/your-model.gguf
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = """
import json, sys, time
from softprompt.core.loading import load_base_model
started = time.perf_counter()
base = load_base_model(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - started, "fingerprint": base.fingerprint}))
"""


def builtin_gguf() -> Path:
    from softprompt.core.loading import BUILTIN_MODELS

    spec = BUILTIN_MODELS["smollm2-135m"]
    found = importlib.util.find_spec(spec.package)
    assert found is not None and found.submodule_search_locations
    return Path(next(iter(found.submodule_search_locations))) / spec.gguf_file


def load(path: Path, cache: Path) -> dict:
    env = {**os.environ, "SOFTPROMPT_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(path)], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", default=None, help="a .gguf file (default: a copy of the built-in model's)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gguf-cache-"))
    path = work / "my-model.gguf"
    shutil.copyfile(args.gguf or builtin_gguf(), path)
    cache = work / "cache"
    first, second = load(path, cache), load(path, cache)
    with open(path, "ab") as handle:  # a changed file: never served from the stale cache
        handle.write(b"\0")
    changed = load(path, cache)
    held = sorted(p.name for p in (cache / "gguf").iterdir())
    print(f"file: {path.stat().st_size / 1e6:.0f} MB; cache entries after the change: {len(held)}")
    print(f"| load | seconds |\n|---|---:|\n| first (dequantize + cache) | {first['seconds']:.1f} |")
    print(f"| second (cache) | {second['seconds']:.1f} |\n| after the file changed | {changed['seconds']:.1f} |")
    print(
        f"second / first: {second['seconds'] / first['seconds']:.1%}; same model: {first['fingerprint'] == second['fingerprint']}"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
