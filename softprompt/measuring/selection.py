"""Model selection on validation only: where validation rows come from, which candidates are tried, which wins.

``softprompt compare`` tunes every method on rows carved out of the training file, never on the
test file, which it opens only once every choice is made (:mod:`softprompt.measuring.compare`).

- :func:`split_validation`: a deterministic validation split, stratified by label, so that a
  rare class is represented in proportion (at least one row where it has two or more).
- :func:`k_folds`: stratified folds for cross-validation, when a validation split would be too
  small to choose on.
- :func:`design`: the candidates of a search space under a budget. A space that fits is tried
  whole; a larger one gets a balanced random design: every value of every setting appears equally
  often (to within one) across the candidates and the combinations are drawn at random, so no
  setting's values are left untried by chance, as they can be with plain random search
  (Bergstra & Bengio, 2012, argue for random over grid search when few settings matter; balancing
  keeps its coverage of each setting).
- :func:`best`: the candidate with the highest validation accuracy, ties broken by the lower
  validation loss, then by the earlier candidate.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from softprompt.core.errors import ConfigError


@dataclass(frozen=True)
class Split:
    """Indices into the training file's rows: what trains, and what validates every choice."""

    train: list[int]
    validation: list[int]


def split_validation(labels: Sequence[int], fraction: float, max_rows: int | None = None, seed: int = 0) -> Split:
    """Stratified validation split of rows with these labels; the same inputs give the same split.

    ``round(fraction x rows)`` rows (at most ``max_rows``) are allotted to the labels in proportion
    (largest remainders first), each label keeping at least one training row; within a label the
    rows are drawn by a seeded shuffle. Both index lists come back in file order.
    """
    if not 0 < fraction < 1:
        raise ConfigError(f"the validation fraction must be between 0 and 1, got {fraction}")
    by_label: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_label.setdefault(label, []).append(index)
    wanted = round(fraction * len(labels))
    if max_rows is not None:
        wanted = min(wanted, max_rows)
    quotas = _allot(wanted, {label: len(rows) for label, rows in by_label.items()})
    if wanted < 1 or sum(quotas.values()) < 1:
        raise ConfigError(
            f"{len(labels)} training rows leave no validation rows at fraction {fraction}: "
            "more training rows or a larger --val-fraction are needed"
        )
    validation: list[int] = []
    for label, rows in sorted(by_label.items()):
        shuffled = list(rows)
        random.Random(f"{seed}:{label}").shuffle(shuffled)
        validation += shuffled[: quotas[label]]
    chosen = set(validation)
    return Split([i for i in range(len(labels)) if i not in chosen], sorted(validation))


def k_folds(labels: Sequence[int], folds: int, seed: int = 0) -> list[Split]:
    """``folds`` stratified folds of the training rows: every row validates in exactly one of them.

    Where a validation split would be a handful of rows, one choice rests on a few coin flips (10
    rows: accuracy moves in steps of 10 points); cross-validation lets every training row vote.
    Rows of each label are shuffled (seeded) and dealt in turn, continuing across labels, so folds
    differ in size by at most one row and hold the labels in proportion.
    """
    if not 2 <= folds <= len(labels):
        raise ConfigError(f"{len(labels)} training rows cannot make {folds} folds: use 2 .. {len(labels)}")
    by_label: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_label.setdefault(label, []).append(index)
    dealt: list[list[int]] = [[] for _ in range(folds)]
    position = 0
    for label, rows in sorted(by_label.items()):
        shuffled = list(rows)
        random.Random(f"{seed}:{label}:folds").shuffle(shuffled)
        for row in shuffled:
            dealt[position % folds].append(row)
            position += 1
    return [Split([i for i in range(len(labels)) if i not in held], sorted(held)) for held in map(set, dealt)]


def split_groups(groups: Sequence[str], fraction: float, max_rows: int | None = None, seed: int = 0) -> Split:
    """A validation split of rows that keeps every group (an input with several references) on one side.

    Rows of one group are the same input written several ways: split apart, the model would
    validate on inputs it trained on. Groups are drawn by a seeded shuffle until the validation
    rows reach ``round(fraction x rows)`` (at most ``max_rows``); at least one group validates and
    one trains.
    """
    if not 0 < fraction < 1:
        raise ConfigError(f"the validation fraction must be between 0 and 1, got {fraction}")
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    if len(members) < 2:
        raise ConfigError(f"{len(groups)} training rows form {len(members)} input(s): a validation split needs two")
    wanted = max(1, round(fraction * len(groups)))
    if max_rows is not None:
        wanted = min(wanted, max_rows)
    order = sorted(members)
    random.Random(f"{seed}:groups").shuffle(order)
    validation: list[int] = []
    for group in order[:-1]:  # the last group always trains
        if validation and len(validation) + len(members[group]) > wanted:
            continue
        validation += members[group]
        if len(validation) >= wanted:
            break
    chosen = set(validation)
    return Split([i for i in range(len(groups)) if i not in chosen], sorted(validation))


def _allot(total: int, sizes: dict[int, int]) -> dict[int, int]:
    """Share ``total`` validation rows among labels in proportion to their sizes (largest remainder).

    Every label keeps a training row, and a label of two or more rows gets a validation row while
    the total allows.
    """
    count = sum(sizes.values())
    exact = {label: total * size / count for label, size in sizes.items()}
    quotas = {label: min(math.floor(share), sizes[label] - 1) for label, share in exact.items()}
    for label in sorted(sizes, key=lambda k: (sizes[k], k)):  # rarest first
        if quotas[label] == 0 and sizes[label] >= 2 and sum(quotas.values()) < total:
            quotas[label] = 1
    order = sorted(sizes, key=lambda k: (quotas[k] - exact[k], k))  # largest shortfall first
    while sum(quotas.values()) < total:
        room = [label for label in order if quotas[label] < sizes[label] - 1]
        if not room:
            break
        for label in room[: total - sum(quotas.values())]:
            quotas[label] += 1
    return quotas


# Balanced designs drawn per search: the one whose pairs of settings are closest to independent wins.
DESIGN_DRAWS = 200


def design(space: Mapping[str, Sequence[Any]], budget: int, seed: int = 0) -> list[dict[str, Any]]:
    """At most ``budget`` distinct settings from ``space`` (name -> values), balanced as the module says.

    Among :data:`DESIGN_DRAWS` seeded balanced draws, the one whose pairs of settings co-occur most
    evenly is kept, so that two settings are not confounded (always changing together) by chance.
    """
    if budget < 1:
        raise ConfigError(f"the search budget must be at least 1 candidate, got {budget}")
    names = list(space)
    for name in names:
        if not space[name]:
            raise ConfigError(f"the search space gives {name!r} no values")
    full = [dict(zip(names, values, strict=True)) for values in itertools.product(*(space[n] for n in names))]
    if len(full) <= budget:
        return full
    rng = random.Random(seed)
    draws = [_balanced_draw(space, budget, full, rng) for _ in range(DESIGN_DRAWS)]
    return min(draws, key=lambda draw: _confounding(draw, space))


def _balanced_draw(
    space: Mapping[str, Sequence[Any]], budget: int, full: list[dict[str, Any]], rng: random.Random
) -> list[dict[str, Any]]:
    columns = {}
    for name, values in space.items():
        cycle: list[Any] = []
        while len(cycle) < budget:
            block = list(values)
            rng.shuffle(block)
            cycle += block
        columns[name] = cycle[:budget]
    picked: list[dict[str, Any]] = []
    for i in range(budget):
        candidate = {name: column[i] for name, column in columns.items()}
        if candidate in picked:  # a repeated combination: the nearest unused one keeps the balance best
            candidate = min((c for c in full if c not in picked), key=lambda c: _distance(c, candidate))
        picked.append(candidate)
    return picked


def _confounding(draw: list[dict[str, Any]], space: Mapping[str, Sequence[Any]]) -> float:
    """Sum over pairs of settings of the squared gaps between joint counts and their even share."""
    total = 0.0
    for a, b in itertools.combinations(space, 2):
        even = len(draw) / (len(space[a]) * len(space[b]))
        counts = {(x, y): 0 for x in space[a] for y in space[b]}
        for candidate in draw:
            counts[candidate[a], candidate[b]] += 1
        total += sum((count - even) ** 2 for count in counts.values())
    return total


def _distance(a: Mapping[str, Any], b: Mapping[str, Any]) -> int:
    return sum(a[key] != b[key] for key in a)


def best(scores: Sequence[tuple[float, float]]) -> int:
    """Index of the best (validation accuracy, validation loss): highest accuracy, then lowest loss, then first."""
    if not scores:
        raise ConfigError("no candidate finished: nothing to choose from")

    def key(i: int) -> tuple[float, float, int]:
        accuracy, loss = scores[i]
        return (-accuracy if math.isfinite(accuracy) else math.inf, loss if math.isfinite(loss) else math.inf, i)

    return min(range(len(scores)), key=key)
