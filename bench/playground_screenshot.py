"""Screenshot of the playground (docs/playground.png): the real server, a real request, headless Chromium.

Starts `softprompt serve` on --model with the adapters under --adapters, opens the page in Debian's
Chromium (apt-get install chromium chromium-driver), sends one request to every model, waits for
all answers to finish streaming and saves a full-page PNG. Exits 1 if an answer fails or the browser
console shows an error.

    python bench/playground_screenshot.py --model smollm2-135m --adapters /tmp/shots/adapters

docs/playground.png shows these two adapters, trained first (3 epochs each; the training times in
their panels are from a shared, loaded 2-vCPU machine):

    softprompt train --model smollm2-135m --limit 50 --num-virtual-tokens 8 --init text --lr 0.03 \
        --epochs 3 --output /tmp/shots/adapters/role-play
    softprompt train --model smollm2-135m --data ../shared/data/awesome-chatgpt-prompts/prompts-2024-06.csv \
        --text-column prompt --limit 60 --eval-rows 20 --num-virtual-tokens 12 --init vocab --lr 0.05 \
        --epochs 3 --output /tmp/shots/adapters/awesome-prompts
"""

from __future__ import annotations

import argparse
import base64
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.inference.browser

from tests.inference.browser import chromium, serve_process


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--adapters", required=True, type=Path)
    parser.add_argument("--output", default=Path("docs/playground.png"), type=Path)
    parser.add_argument("--prompt", default="I want you to act as a logistician. ")
    parser.add_argument("--max-tokens", default=48, type=int)
    parser.add_argument("--width", default=1360, type=int)
    args = parser.parse_args()

    log = Path(tempfile.mkdtemp(prefix="playground-shot-")) / "serve.log"
    with serve_process(args.model, args.adapters, log, timeout=600) as url, chromium(args.width, 900) as driver:
        driver.get(url + "/")
        _wait(lambda: int(driver.find_element("tag name", "body").get_attribute("data-loads") or 0) >= 1, 120)
        prompt = driver.find_element("id", "prompt")
        prompt.clear()
        prompt.send_keys(args.prompt)
        tokens = driver.find_element("id", "max-tokens")
        tokens.clear()
        tokens.send_keys(str(args.max_tokens))
        started = time.perf_counter()
        driver.find_element("id", "run").click()

        def columns() -> list:
            return driver.find_elements("css selector", "#answers .column")

        _wait(lambda: columns() and all(c.get_attribute("data-state") in ("done", "error") for c in columns()), 600)
        print(f"{len(columns())} answers in {time.perf_counter() - started:.1f} s")
        failed = [c.get_attribute("data-model") for c in columns() if c.get_attribute("data-state") != "done"]
        height = driver.execute_script("return document.documentElement.scrollHeight")
        # The whole page, not just the window: headless Chromium caps window resizes at its screen size.
        clip = {"x": 0, "y": 0, "width": args.width, "height": height, "scale": 1}
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"captureBeyondViewport": True, "clip": clip})
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_bytes(base64.b64decode(shot["data"]))
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    print(f"screenshot: {args.output}")
    for problem in [f"answer failed: {m}" for m in failed] + [f"console: {e['message']}" for e in errors]:
        print(problem, file=sys.stderr)
    return 1 if failed or errors else 0


def _wait(condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the page did not get there within {seconds:.0f} s")
        time.sleep(0.2)


if __name__ == "__main__":
    raise SystemExit(main())
