"""A text task's report (measuring/report_text.py): model text is shown as text, never markup."""

from softprompt.measuring.report_text import _side_by_side, page


def test_outputs_are_shown_as_text_never_markup():
    shown = [("<b>in</b>", ["``` ref"], [("LoRA", "<script>x</script> ```` end")])]  # input, references, outputs
    html = page("t", "m", shown)
    assert "<script>" not in html and "&lt;script&gt;x&lt;/script&gt;" in html and "&lt;b&gt;in&lt;/b&gt;" in html

    lines = _side_by_side(shown)
    fences = [line for line in lines if line.startswith("`")]
    assert "`````text" in fences  # longer than the output's run of four backticks: it cannot close the block
