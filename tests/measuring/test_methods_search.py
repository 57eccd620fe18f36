"""One method's search (measuring/methods/search.py): every candidate tried on validation, none twice."""

from softprompt.measuring.compare import CompareConfig, plan
from softprompt.measuring.methods.search import search
from tests.measuring.compare_helpers import SMALL, compare_setup


def test_few_shot_settings_that_give_the_same_context_are_tried_once(tiny_dirs, tmp_path):
    """With one example per class, two example orders can be the same text: the search does not score it twice."""
    setup = compare_setup(tiny_dirs, tmp_path)
    _, _, jobs = plan(
        setup,
        CompareConfig(
            methods=("few-shot",),
            pe_shots=(1,),
            pe_orders=4,
            **{k: v for k, v in SMALL.items() if k not in ("pe_shots", "pe_orders")},
        ),
    )
    contexts = [c.context for c in search(jobs[0], setup).found.candidates]
    tried = len(jobs[0].candidates) * len(jobs[0].seeds)  # every setting with every draw of examples
    assert len(contexts) == len(set(contexts)) and len(contexts) < tried
