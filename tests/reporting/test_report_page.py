"""report.html at a glance: the answer and one figure before any table, wide tables scrolling in their own
box. The layout is measured in a real headless Chromium at a laptop's width where one is installed
(Debian: `apt-get install chromium`); the structure is checked everywhere."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from helpers import make_sweep

from lesionseg.reporting.answer import ANSWER_TITLE
from lesionseg.reporting.report import HEADLINE_FIGURE, write_report

LAPTOP = (1366, 768)
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


class _Order(HTMLParser):
    """The page's landmarks in document order: ("h2", text), ("img", alt), ("table", parent class)."""

    def __init__(self):
        super().__init__()
        self.events, self._stack, self._h2 = [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.events.append(("img", attrs.get("alt", "")))
        elif tag == "table":
            self.events.append(("table", self._stack[-1] if self._stack else ""))
        elif tag == "h2":
            self._h2 = ""
        if tag in ("div", "section"):
            self._stack.append(attrs.get("class", ""))

    def handle_endtag(self, tag):
        if tag in ("div", "section"):
            self._stack.pop()
        elif tag == "h2":
            self.events.append(("h2", self._h2))
            self._h2 = None

    def handle_data(self, data):
        if self._h2 is not None:
            self._h2 += data


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    sweep_dir = make_sweep(tmp_path_factory.mktemp("page"), [0.5, 0.6, 0.7, 0.8, 0.9], seeds=[0, 1], n_cases=8)
    return write_report(sweep_dir, n_boot=200)


def test_the_page_opens_with_the_answer_and_its_figure(report):
    page = _Order()
    page.feed((report / "report.html").read_text(encoding="utf-8"))
    kinds = [kind for kind, _ in page.events]
    assert page.events[0] == ("h2", ANSWER_TITLE)
    assert page.events[1][0] == "img" and page.events[1][1].startswith(HEADLINE_FIGURE)
    assert kinds.index("img") < kinds.index("table")
    alts = [alt for kind, alt in page.events if kind == "img"]
    assert len(alts) == len(set(alts)) == 6  # the headline figure is not embedded a second time
    assert all(parent == "scroll" for kind, parent in page.events if kind == "table")

    stats = json.loads((report / "stats.json").read_text())
    md = (report / "summary.md").read_text(encoding="utf-8")
    opening = md.split(f"## {ANSWER_TITLE}")[1].split("\n## ")[0]
    assert [line[2:] for line in opening.strip().splitlines() if line.startswith("- ")] == stats["answer"]
    assert f"]({HEADLINE_FIGURE})" in opening


def test_the_answer_names_the_best_configuration_and_the_tests(report):
    stats = json.loads((report / "stats.json").read_text())
    with open(report / "summary.csv", newline="") as f:
        best = max(csv.DictReader(f), key=lambda r: float(r["dsc"]))
    dsc = next(line for line in stats["answer"] if line.startswith("DSC:"))
    assert dsc.startswith(f"DSC: best with β = {float(best['beta']):g} ({float(best['dsc']):.3f} ± "
                          f"{float(best['dsc_sd_cases']):.3f} SD over 8 test cases)")
    lower = [c["label"] for c in stats["comparisons"] if c["metric"] == "dsc" and c["verdict"].startswith("lower")]
    if lower:
        assert f"lower with {', '.join(lower)}" in dsc
    apr = next(line for line in stats["answer"] if line.startswith("APR:"))
    assert "against" not in apr  # APR is not tested: nothing claimed


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian: apt-get install chromium)")
def test_at_a_laptops_width_nothing_runs_off_the_page(report, tmp_path):
    measure = ("<script>addEventListener('load', () => { const box = e => e.getBoundingClientRect();"
               "document.body.dataset.layout = JSON.stringify({"
               "page: document.documentElement.scrollWidth, window: innerWidth,"
               "boxes: [...document.querySelectorAll('div.scroll')].map(d => [d.scrollWidth, d.clientWidth, box(d).right]),"
               "images: [...document.querySelectorAll('img')].map(i => box(i).right),"
               "answer: box(document.querySelector('section.answer')).bottom,"
               "table: box(document.querySelector('table')).top}); });</script>")
    page = tmp_path / "report.html"
    page.write_text((report / "report.html").read_text(encoding="utf-8").replace("</body>", measure + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={LAPTOP[0]},{LAPTOP[1]}"]
    dom = subprocess.run([CHROMIUM, *flags, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'data-layout="([^"]*)"', dom)
    assert found, "Chromium gave no layout"
    layout = json.loads(found.group(1).replace("&quot;", '"'))
    assert layout["page"] <= layout["window"], layout  # no sideways scrolling of the page itself
    assert all(right <= layout["window"] for _, _, right in layout["boxes"]), layout
    assert any(width > client for width, client, _ in layout["boxes"]), layout  # the wide tables do scroll
    assert all(right <= layout["window"] for right in layout["images"]), layout
    assert layout["answer"] <= layout["table"], layout
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
