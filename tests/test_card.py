"""The memoize card on a real run (issue 16, part 3): added to `end` by
`--memoize-card` / METAFLOW_MEMOIZE_CARD, never twice, read back with
`card get` and the Client API, and rendered in headless Chromium.

Two runs of tests/flows/card_flow.py: the first misses everywhere; the second
hits (in a task, and by clones in the orchestrator: the foreach split and its
three items), refreshes the join (`--memoize-refresh-step pick`) and misses
below it because of that refresh.
"""

import os
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from flowrunner import FlowRunner

FLOW = "card_flow.py"
HIT_REASON = "same key, and everything the entry recorded using is unchanged"
SCREENSHOT = Path(__file__).parent.parent / "docs" / "images" / "memoize-card.png"

_CARDS_SCRIPT = """
import json, sys
from metaflow import Flow, namespace
from metaflow.cards import get_cards
from metaflow.plugins.cards.exception import CardNotPresentException
namespace(None)
out = {}
for run_id in sys.argv[1:]:
    end = Flow("CardFlow")[run_id]["end"].task
    try:
        out[run_id] = [[card.type, card.get()] for card in get_cards(end)]
    except CardNotPresentException:
        out[run_id] = []
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def card_runs(tmp_path_factory):
    """(runner, first run id, second run id, {run id: [(card type, html)] of end})."""
    runner = FlowRunner(tmp_path_factory.mktemp("card") / "work")
    runner.add_flow(FLOW)
    first = runner.run(FLOW, "--memoize-card")
    # the second run: end already carries a memoize card in the source, and the
    # setting asks for one too; one card only
    source = runner.workdir / FLOW
    text = source.read_text()
    source.write_text(
        text.replace(
            "from metaflow import FlowSpec,", "from metaflow import FlowSpec, card,"
        ).replace(
            "    @step\n    def end(self):",
            '    @card(type="memoize")\n    @step\n    def end(self):',
        )
    )
    second = runner.run(FLOW, "--memoize-refresh-step", "pick", env={"METAFLOW_MEMOIZE_CARD": "1"})
    cards = runner.client_json(_CARDS_SCRIPT, first.run_id, second.run_id)
    return runner, first, second, cards


def _rows(html):
    """{step: [(task id, decision, the row's text)]} from the card's task rows."""
    rows = {}
    for m in re.finditer(
        r'<tr data-step="([^"]+)" data-task="([^"]*)" data-decision="([^"]+)">(.*?)</tr>', html
    ):
        text = re.sub(r"<[^>]+>", " ", m.group(4)).replace("&#x27;", "'")
        rows.setdefault(m.group(1), []).append((m.group(2), m.group(3), " ".join(text.split())))
    return rows


def _totals(html):
    return dict(re.findall(r'data-total="([a-z]+)"><div class="n">([^<]*)</div>', html))


def test_card_shows_every_decision_of_the_run(card_runs):
    runner, first, second, cards = card_runs
    # one memoize card on end in each run: added by --memoize-card, then not
    # added a second time beside the one in the source
    assert [t for t, _ in cards[first.run_id]] == ["memoize"], cards[first.run_id]
    assert [t for t, _ in cards[second.run_id]] == ["memoize"], cards[second.run_id]

    html = cards[first.run_id][0][1]
    rows = _rows(html)
    assert sorted(rows) == ["featurize", "pick", "report", "split", "train"]
    assert all(d == "miss" for step in rows.values() for _, d, _ in step)
    assert all("no entry" in text for step in rows.values() for _, _, text in step)
    assert _totals(html)["misses"] == "7" and _totals(html)["hits"] == "0"
    assert "No hits in this run" in html

    # the same card, through `card get` (what `card view` and the UI show)
    out = runner.workdir / "card.html"
    runner.cli(FLOW, "card", "get", "end", str(out), "--type", "memoize")
    html = out.read_text()
    assert html == cards[second.run_id][0][1]
    rows = _rows(html)
    origin = "run %s/" % first.run_id
    # a hit in its task (@catch keeps the orchestrator from cloning it)
    [(_, decision, text)] = rows["featurize"]
    assert decision == "hit" and HIT_REASON in text and origin + "featurize/" in text
    # the foreach split and its three items: cloned in the orchestrator
    [(_, decision, text)] = rows["split"]
    assert decision == "cloned hit" and origin + "split/" in text
    train = rows["train"]
    assert [d for _, d, _ in train] == ["cloned hit"] * 3
    assert [re.search(r"items=(\d+)", text).group(1) for _, _, text in train] == [
        "10",
        "20",
        "30",
    ]
    assert all(origin + "train/" in text for _, _, text in train)
    # the join refreshed, and the step below it missed because of that refresh
    [(_, decision, text)] = rows["pick"]
    assert decision == "refresh" and "refresh requested" in text
    [(_, decision, text)] = rows["report"]
    assert decision == "miss"
    assert "input 'picked_at' changed (read by the step), because pick was refreshed" in text
    # totals, and the time saved per step as bars (featurize sleeps 0.5 s, each
    # train item 0.2 s)
    assert _totals(html) == {
        "tasks": "7",
        "hits": "5",
        "cloned": "4",
        "misses": "1",
        "refreshes": "1",
        "other": "0",
        "saved": _totals(html)["saved"],
    }
    saved = dict(re.findall(r'<g data-step="([^"]+)" data-saved="([0-9.]+)">', html))
    assert sorted(saved) == ["featurize", "pick", "report", "split", "train"]
    assert float(saved["featurize"]) >= 0.5 and float(saved["train"]) >= 0.6
    assert float(saved["pick"]) == 0 and float(saved["report"]) == 0
    assert "Not memoized" in html and "<code>start</code>" in html and "<code>end</code>" in html
    # self-contained: nothing is fetched when it is opened
    assert not re.search(r"<script|<link|<img|<iframe|\bsrc=|@import|url\(", html)
    assert re.findall(r"https?://[^\"' ]+", html) == ["http://www.w3.org/2000/svg"]


def test_without_the_setting_end_has_no_memoize_card(runner):
    runner.add_flow(FLOW)
    result = runner.run(FLOW)
    cards = runner.client_json(_CARDS_SCRIPT, result.run_id)
    assert cards[result.run_id] == []


def _chromium():
    """The headless browser, or None (`make install` installs it where apt-get can)."""
    for name in (os.environ.get("MEMOIZE_TEST_CHROMIUM"), "chromium", "chromium-browser"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _headless(browser, profile, *args):
    # no network, no profile of the user's, no first-run screens
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--user-data-dir=%s" % profile,
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


class _Text(HTMLParser):
    """The visible text of a page, and its task rows (attributes of each <tr>)."""

    def __init__(self):
        super().__init__()
        self.text, self.rows, self._skip = [], [], 0
        self.elements = set()

    def handle_starttag(self, tag, attrs):
        self.elements.add(tag)
        if tag in ("style", "title"):
            self._skip += 1
        if tag == "tr" and dict(attrs).get("data-decision"):
            self.rows.append(dict(attrs))

    def handle_endtag(self, tag):
        if tag in ("style", "title"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip and data.strip():
            self.text.append(data.strip())


def test_card_renders_in_a_browser(card_runs, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip(
            "no chromium on this machine (`make install` installs the Debian package "
            "`chromium` where apt-get is available; or set MEMOIZE_TEST_CHROMIUM)"
        )
    _, _, second, cards = card_runs
    page = tmp_path / "card.html"
    page.write_text(cards[second.run_id][0][1])

    dumped = _headless(browser, tmp_path / "profile-dom", "--dump-dom", page.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-3000:]
    parsed = _Text()
    parsed.feed(dumped.stdout)
    text = " ".join(parsed.text)
    # what the browser built from the document: every row, the chart, the totals
    assert "@memoize" in text and "CardFlow/%s" % second.run_id in text
    assert {"svg", "rect", "table", "section"} <= parsed.elements
    decisions = [(r["data-step"], r["data-decision"]) for r in parsed.rows]
    assert decisions == [
        ("featurize", "hit"),
        ("split", "cloned hit"),
        ("train", "cloned hit"),
        ("train", "cloned hit"),
        ("train", "cloned hit"),
        ("pick", "refresh"),
        ("report", "miss"),
    ]
    assert "5 hits (4 cloned), 1 miss, 1 refresh" in text
    assert "because pick was refreshed" in text

    shot = tmp_path / "card.png"
    taken = _headless(
        browser,
        tmp_path / "profile-shot",
        "--screenshot=%s" % shot,
        "--window-size=1200,900",
        page.as_uri(),
    )
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-3000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1200, 900)
    # a page that failed to render is one flat colour: a real one compresses worse
    assert len(png) > 20000, len(png)
    if os.environ.get("MEMOIZE_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, SCREENSHOT)
