"""The files a run leaves in its output directory, named once: training writes them; the card, the server's
adapter details, compare and the CLI read them. (An adapter's own two files are its format's:
:mod:`softprompt.core.adapter`.)"""

from __future__ import annotations

# softprompt train (and every trained candidate of compare)
METRICS = "metrics.json"  # the run's summary: losses, budget spent, provenance
RECORDS = "metrics.jsonl"  # a line per optimizer step and per evaluation
CURVE = "loss_curve.png"
CHECKPOINT = "checkpoint.safetensors"  # trained state, optimizer moments, RNG and loop state, for --resume

# softprompt compare
SPLIT = "split.json"  # which training rows validate (and the other folds, when cross-validating)
SELECTION = "selection.json"  # every choice, written before the test file is opened
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
