"""`lpuc report ART --html`: a self-contained page; structure always, a real browser when one exists."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from lpuc.cli import main
from lpuc.report_html import sram_occupancy, unit_utilization
from lpuc.schedule.critical_path import critical_path
from tests.test_critical_path import _ins, _program, _rows

WINDOW = (1400, 1000)


@pytest.fixture(scope="module")
def report_page(mlp_program, tmp_path_factory):
    directory = tmp_path_factory.mktemp("report")
    art, page = directory / "mlp.lpu", directory / "mlp.html"
    mlp_program.save(art)
    result = CliRunner().invoke(main, ["report", str(art), "--html", str(page)])
    assert result.exit_code == 0, result.output
    assert "cycles" in result.output  # the text summary is still printed
    assert sorted(p.name for p in directory.iterdir()) == ["mlp.html", "mlp.lpu"]  # no temp file left
    return mlp_program, page


def test_page_structure(report_page):
    program, page = report_page
    text = page.read_text()
    s = program.summary
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert text.count("<svg") == 2 == text.count("</svg>")  # utilization, SRAM occupancy
    # self-contained: nothing fetched from anywhere
    assert not re.search(r"https?://|src=|<link|@import|url\(|<script", text)
    for number in (f"{s['cycles']:,}", f"{s['latency_us']} us", f"{s['instructions']:,}", f"{s['macs']:,}"):
        assert number in text, number
    for row in ("MXM0", "SXM0", "VXM", "HOST"):
        assert f">{row}</text>" in text, row
    path = critical_path(program)
    rows = re.findall(r"<tr><td class='num'>(\d+)</td><td class='num'>(\d+)</td>", text)
    assert len(rows) == min(20, len(path))
    longest = max(path, key=lambda i: (i.duration, -i.start, -i.id))
    assert rows[0] == ("1", str(longest.id))


def test_utilization_and_sram_numbers():
    x, a, y = 0, 1, 3
    prog = _program(
        [
            _ins(0, "sxm.kernel", "SXM0", 0, 15, [_rows(x, 0, 0, 8)], [_rows(a, 1, 0, 8)]),
            _ins(1, "vxm.map", "VXM0", 20, 10, [_rows(a, 1, 0, 8)], [_rows(y, 3, 0, 8)]),
        ]
    )
    edges = np.linspace(0, 40, 5)
    rows = unit_utilization(prog, edges)
    np.testing.assert_allclose(rows["SXM0"], [1.0, 0.5, 0.0, 0.0])
    alus = prog.target.vxm_alus
    np.testing.assert_allclose(rows["VXM"], [0.0, 0.0, 1.0 / alus, 0.0])
    np.testing.assert_allclose(rows["HOST"], 0.0)
    assert "MXM0" in rows and "MXM0.LW" not in rows
    # 32-word tiles, live (lpuc.schedule.liveness): input [0, 15) to its last read, a [0, 30),
    # output [20, end=30), the unused tile 2 [0, 1); peak per 10-cycle bucket
    tile = 8 * 4 * prog.target.word_bytes
    np.testing.assert_allclose(sram_occupancy(prog, np.linspace(0, 30, 4)), [3 * tile, 2 * tile, 2 * tile])


def _chromium() -> str | None:
    return next(
        (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )


def _screenshot(browser: str, page, png, profile) -> None:
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",  # the tests may run as root
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def _png_size(png) -> tuple[int, int]:
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary (apt-get install chromium) to render in")
def test_renders_in_a_headless_browser(report_page, tmp_path):
    _, page = report_page
    browser = _chromium()
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    _screenshot(browser, page, tmp_path / "report.png", tmp_path / "profile")
    _screenshot(browser, blank, tmp_path / "blank.png", tmp_path / "profile")
    assert _png_size(tmp_path / "report.png") == WINDOW
    # A PNG compresses a blank page to almost nothing; the drawn page is many times larger.
    assert (tmp_path / "report.png").stat().st_size > 10 * (tmp_path / "blank.png").stat().st_size
