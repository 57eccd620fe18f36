"""A text task's report (measuring/report_text.py): model text is shown as text, never markup."""

from softprompt.measuring.report_text import _side_by_side, page


def test_outputs_are_shown_as_text_never_markup():
    report = {
        "side_by_side": {"inputs": ["<b>in</b>"], "references": [["``` ref"]], "showcase": []},
        "methods": [{"method": "LoRA", "scores": {}, "outputs": ["<script>x</script> ```` end"], "showcase": []}],
        "task": "t",
        "model": "m",
    }
    shown = page(report)
    assert "<script>" not in shown and "&lt;script&gt;x&lt;/script&gt;" in shown and "&lt;b&gt;in&lt;/b&gt;" in shown

    lines = _side_by_side(report)
    fences = [line for line in lines if line.startswith("`")]
    assert "`````text" in fences  # longer than the output's run of four backticks: it cannot close the block
