"""The validation split, the candidate design and the choice."""

import collections
import itertools

import pytest

from softprompt.core.errors import ConfigError
from softprompt.measuring.selection import best, design, split_groups, split_validation


def test_split_is_stratified_deterministic_and_disjoint():
    labels = [0] * 37 + [1] * 13  # twitter_complaints' 50 training rows
    split = split_validation(labels, 0.2)
    assert split == split_validation(labels, 0.2)  # same inputs, same split
    assert collections.Counter(labels[i] for i in split.validation) == {0: 7, 1: 3}
    assert sorted(split.train + split.validation) == list(range(50))
    assert split.validation == sorted(split.validation) and split.train == sorted(split.train)
    assert split_validation(labels, 0.2, seed=1) != split


def test_split_caps_rows_and_keeps_rare_labels():
    labels = [i % 6 for i in range(5452)]
    split = split_validation(labels, 0.2, max_rows=300)
    assert len(split.validation) == 300
    assert set(collections.Counter(labels[i] for i in split.validation).values()) == {50}
    rare = [0] * 97 + [1] * 3  # 5% would give the rare label no row at all without the floor
    found = collections.Counter(rare[i] for i in split_validation(rare, 0.05).validation)
    assert found[1] == 1 and sum(found.values()) == 5


def test_split_refuses_what_leaves_no_validation():
    with pytest.raises(ConfigError, match="no validation rows"):
        split_validation([0, 1], 0.2)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        split_validation([0, 1, 0, 1], 1.5)


def test_design_is_balanced_distinct_and_whole_when_it_fits():
    space = {
        "lr": [0.3, 0.1, 0.03, 0.01],
        "init": ["labels", "text"],
        "scheduler": ["linear", "constant"],
        "reparam": [0, 128],
    }
    picked = design(space, 8, seed=0)
    assert len(picked) == 8 and len({tuple(c.values()) for c in picked}) == 8
    for name, values in space.items():
        counts = collections.Counter(c[name] for c in picked)
        assert set(counts) == set(values) and max(counts.values()) - min(counts.values()) <= 1, name
    for a, b in itertools.combinations(space, 2):  # no two settings confounded by chance
        assert len({(c[a], c[b]) for c in picked}) > max(len(space[a]), len(space[b])), (a, b)
    assert design(space, 8, seed=0) == picked
    small = {"lr": [1, 2], "rank": [4]}
    assert design(small, 6) == [{"lr": 1, "rank": 4}, {"lr": 2, "rank": 4}]


def test_best_takes_accuracy_then_loss_then_the_first():
    assert best([(0.7, 0.5), (0.8, 0.9), (0.8, 0.4)]) == 2
    assert best([(0.8, 0.4), (0.8, 0.4)]) == 0
    assert best([(float("nan"), 0.1), (0.5, float("nan"))]) == 1
    with pytest.raises(ConfigError):
        best([])


def test_group_split_keeps_every_input_on_one_side():
    groups = [f"g{i // 3}" for i in range(30)] + ["solo"]  # ten inputs of three references, one of one
    split = split_groups(groups, 0.2, seed=1)
    assert split == split_groups(groups, 0.2, seed=1) and split != split_groups(groups, 0.2, seed=2)
    assert not set(split.train) & set(split.validation) and len(split.train) + len(split.validation) == 31
    assert {groups[i] for i in split.validation}.isdisjoint(groups[i] for i in split.train)
    assert 3 <= len(split.validation) <= 7  # round(0.2 x 31) = 6, whole groups
    assert len(split_groups(groups, 0.5, max_rows=4).validation) <= 4
    with pytest.raises(ConfigError, match="form 1 input"):
        split_groups(["a", "a"], 0.5)


def test_k_folds_validate_every_row_once_stratified_and_even():
    from softprompt.measuring.selection import k_folds

    labels = [0] * 31 + [1] * 19  # twitter_complaints' 50 training rows, roughly
    folds = k_folds(labels, 3, seed=0)
    held = [i for fold in folds for i in fold.validation]
    assert sorted(held) == list(range(50))  # each row validates exactly once
    assert max(len(f.validation) for f in folds) - min(len(f.validation) for f in folds) <= 1
    for fold in folds:
        assert not set(fold.train) & set(fold.validation) and len(fold.train) + len(fold.validation) == 50
        ones = sum(labels[i] for i in fold.validation)
        assert abs(ones - 19 / 3) <= 1  # each label in proportion
    assert k_folds(labels, 3, seed=0) == folds and k_folds(labels, 3, seed=1) != folds
    with pytest.raises(ConfigError, match="cannot make 1 folds"):
        k_folds(labels, 1)
