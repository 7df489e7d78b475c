"""report/render.py: one renderer for the run report's and the sweep report's blocks, in Markdown and HTML."""

from __future__ import annotations

import base64
from pathlib import Path

from lmforge.report.render import RUN_REPORT_PAGE, to_html, to_markdown
from lmforge.sweep.report import SWEEP_PAGE

PNG = b"\x89PNG\r\n\x1a\nnot really"


def _blocks(tmp_path: Path) -> list[tuple]:
    (tmp_path / "plots").mkdir()
    png = tmp_path / "plots" / "loss.png"
    png.write_bytes(PNG)
    return [
        ("h1", "Title <1>"),
        ("p", "a & b"),
        ("code", "python train.py x=1"),
        ("table", ["k", 2], [["**total**", 3], ["a|b", None]]),
        ("h3", "Loss"),
        ("img", "Loss", png),
    ]


def test_markdown_links_images_and_escapes_table_cells(tmp_path):
    assert to_markdown(_blocks(tmp_path), tmp_path) == (
        "# Title <1>\n\na & b\n\n```\npython train.py x=1\n```\n\n| k | 2 |\n|---|---|\n| **total** | 3 |\n"
        "| a\\|b | None |\n\n### Loss\n\n![Loss](plots/loss.png)\n"
    )


def test_html_is_self_contained_and_escaped_in_either_page(tmp_path):
    data = base64.b64encode(PNG).decode("ascii")
    blocks = _blocks(tmp_path)
    run_page = to_html(blocks)
    assert run_page == to_html(blocks, RUN_REPORT_PAGE)
    assert run_page.startswith(RUN_REPORT_PAGE.head) and run_page.endswith("</body></html>\n")
    assert (
        "<h1>Title &lt;1&gt;</h1><p>a &amp; b</p><pre>python train.py x=1</pre>"
        "<table><thead><tr><th>k</th><th>2</th></tr></thead><tbody><tr><td>total</td><td>3</td></tr>"
        "<tr><td>a|b</td><td>None</td></tr></tbody></table>"
        f'<h3>Loss</h3><img alt="Loss" src="data:image/png;base64,{data}">'
    ) in run_page
    sweep_page = to_html(blocks, SWEEP_PAGE)
    assert (
        sweep_page
        == SWEEP_PAGE.head
        + "\n"
        + "\n".join(
            [
                "<h1>Title &lt;1&gt;</h1>",
                "<p>a &amp; b</p>",
                "<pre>python train.py x=1</pre>",
                "<table><tr><th>k</th><th>2</th></tr><tr><td>total</td><td>3</td></tr><tr><td>a|b</td><td>None</td></tr>"
                "</table>",
                "<h3>Loss</h3>",
                f"<img alt='Loss' style='max-width:100%' src='data:image/png;base64,{data}'>",
            ]
        )
        + "\n"
    )
