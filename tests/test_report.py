"""The static report: every table on one page, differences to the paper highlighted."""

from __future__ import annotations

from scripts.report import build

TABLE = """# Table 4: demo

| task | optimizer | runs | loss@steps=200 (ours) | paper | diff |
|---|---|---|---|---|---|
| rosenbrock | adam | 2/2 | 5.342e-05 ± 0 | 5.342e-05 | -0.0% |
| rosenbrock | momentum | 2/2 | 0.0001359 ± 0 | 0.01397 | -99.0% |

![table_4](figures/table_4.png)
"""


def test_report_links_every_table_and_highlights_differences(tmp_path):
    (tmp_path / "table_4.md").write_text(TABLE)
    (tmp_path / "table_12.md").write_text(TABLE.replace("Table 4", "Table 12"))
    (tmp_path / "reliability.md").write_text("# Reliability\n")
    page = build(tmp_path).read_text()
    assert page.index('id="table_4"') < page.index('id="table_12"') < page.index('id="reliability"')
    assert '<td class="near">-0.0%</td>' in page and '<td class="far">-99.0%</td>' in page
    assert 'src="figures/table_4.png"' in page
