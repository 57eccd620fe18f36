"""The comparison report (measuring/report.py): sizes and parameter counts as the table shows them."""

from softprompt.measuring.report import params, size


def test_sizes_take_the_largest_unit_below_1024():
    shown = [size(n) for n in (None, 512, 1536, 5 * 1024**2, 3 * 1024**3, 5 * 1024**4)]
    assert shown == ["-", "512 B", "1.5 KB", "5.0 MB", "3.0 GB", "5120.0 GB"]


def test_parameter_counts_show_small_shares_to_four_places():
    assert [params(0, 0.0), params(1234, 0.05), params(1_234_567, 1.5)] == ["0", "1,234 (0.0500%)", "1,234,567 (1.50%)"]
