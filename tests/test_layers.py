"""The package's layers: lower never imports upper, inference never imports training, no import cycles.

core       models, data, prompt, adapter io and the prompt core (decoder, layouts, loss)
training   the trainer and what it needs (passes, checkpoints, processes)
inference  engine, generation, serving, export: core only, never training
measuring  eval, compare, methods, reports: may use all of the above
cli        argument parsing over everything; softprompt/__init__.py and demo.py are the top
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import softprompt

ROOT = Path(softprompt.__file__).parent
ALLOWED = {
    "core": {"core"},
    "training": {"core", "training"},
    "inference": {"core", "inference"},
    "measuring": {"core", "training", "inference", "measuring"},
    "cli": {"core", "training", "inference", "measuring", "cli", "top"},
    "top": {"core", "training", "inference", "measuring", "cli", "top"},
}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else "top"


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("softprompt"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("softprompt"))
    return found


MODULES = {_module(p): p for p in ROOT.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The project module an import names (``from a.b import c`` may name module a.b.c or object c of a.b)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def test_no_module_imports_an_upper_layer_or_a_sibling_it_must_not():
    wrong = []
    for module, path in MODULES.items():
        for imported in filter(None, map(_resolve, _imports(path, top_level_only=False))):
            if _layer(imported) not in ALLOWED[_layer(module)]:
                wrong.append(f"{module} -> {imported}")
    assert not wrong


def test_no_import_cycles():
    graph = {
        m: {r for r in map(_resolve, _imports(p, top_level_only=True)) if r and r != m} for m, p in MODULES.items()
    }
    # __init__ modules re-export their package; importing a submodule imports its parents first
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, trail: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1 and not _is_parent(nxt, node):
                cycle.extend(trail[trail.index(nxt) :] + [node, nxt] if nxt in trail else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, [*trail, node]):
                return True
        state[node] = 2
        return False

    for module in sorted(graph):
        if state.get(module) is None and visit(module, []):
            break
    assert not cycle, " -> ".join(cycle)


def _is_parent(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def test_one_training_loop_takes_every_optimizer_step():
    """Every trained method (prompts of every form, LoRA, full fine-tuning) steps in training/loop.py alone,
    and only training/train.py builds an optimizer: compare's methods cannot drift apart in their loops."""
    root = Path(softprompt.__file__).parent
    steps, optimizers = [], []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        where = str(path.relative_to(root))
        steps += [where for _ in re.finditer(r"optimi[sz]er\.step\(", text)]
        optimizers += [where for _ in re.finditer(r"torch\.optim\.(?!Optimizer\b|lr_scheduler)\w+\(", text)]
    assert steps == ["training/loop.py"], steps
    assert optimizers == ["training/train.py"], optimizers
