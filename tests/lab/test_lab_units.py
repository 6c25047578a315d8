"""The lab's pure parts: markdown from outside as safe HTML, sign-in rules over time, the charts' shapes."""

from __future__ import annotations

import subprocess
import sys

import anyio
import lxml.html
import pytest

from fusion_mcp.core.errors import Redactor
from fusion_mcp.lab import charts
from fusion_mcp.lab.auth import FAILURE_WINDOW_S, MAX_FAILURES, ONE_TIME_S, SESSION_S, SignIns
from fusion_mcp.lab.markup import TAGS, inline, markdown
from fusion_mcp.lab.watch import KEEP_S, Cursor, Watched, Watches
from fusion_mcp.store import UsageTotal

TOKEN = "alice-lab-token-0123456789"


@pytest.mark.parametrize(
    "text",
    [
        "<script>alert(1)</script>",
        '<img src="http://127.0.0.1:9/x.png" onerror="alert(1)">',
        "[x](javascript:alert(1))",
        "[x]( javascript:alert(1))",
        "[x](JaVaScRiPt:alert(1))",
        "[x](&#106;avascript:alert(1))",
        "[x](vbscript:msgbox(1))",
        "[x](data:text/html,<script>alert(1)</script>)",
        "<javascript:alert(1)>",
        '<a href="javascript:alert(1)">x</a>',
        "<svg onload=alert(1)></svg>",
        '<iframe src="http://127.0.0.1:9/"></iframe>',
        "<style>body{background:url(http://127.0.0.1:9/)}</style>",
        '<div style="background:url(http://127.0.0.1:9/)">x</div>',
        "[x][r]\n\n[r]: javascript:alert(1)",
        '<form action="http://127.0.0.1:9/"><button>go</button></form>',
    ],
)
def test_hostile_markdown_keeps_no_markup_that_could_run_or_load(text: str) -> None:
    """Read back as a browser would parse it: only allowed elements and attributes, links to http(s) only."""
    root = lxml.html.fragment_fromstring(str(markdown(text)), create_parent="div")
    for element in root.iter():
        assert element.tag in {"div", *TAGS}, element.tag
        assert set(element.attrib) <= {"href", "title", "target", "rel", "start"}, element.attrib
        if element.tag == "a" and "href" in element.attrib:
            assert element.attrib["href"].startswith(("http://", "https://", "mailto:")), element.attrib
            assert element.attrib["rel"] == "noopener noreferrer"
    assert not [e for e in root.iter() if e.tag in ("img", "script", "svg", "iframe", "style", "form")]


def test_images_become_links_and_links_say_noopener_noreferrer() -> None:
    html = str(markdown("![a pixel](https://example.org/p.png) and [docs](https://example.org/docs)"))
    assert "<img" not in html
    assert '<a href="https://example.org/p.png" target="_blank" rel="noopener noreferrer">image: a pixel</a>' in html
    assert '<a href="https://example.org/docs" target="_blank" rel="noopener noreferrer">docs</a>' in html


def test_markdown_structure_survives() -> None:
    html = str(markdown("# Title\n\n**bold** *em* `code`\n\n- a\n- b\n\n|x|y|\n|-|-|\n|1|2|\n\n```\nblock\n```"))
    for tag in (
        "<h1>",
        "<strong>bold</strong>",
        "<em>em</em>",
        "<code>code</code>",
        "<li>a</li>",
        "<td>1</td>",
        "<pre>",
    ):
        assert tag in html
    assert str(inline("a **point**")) == "a <strong>point</strong>"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failed_sign_ins_lock_the_address_for_the_rest_of_the_window() -> None:
    clock = Clock()
    sign_ins = SignIns({TOKEN: "alice"}, clock)
    for _ in range(MAX_FAILURES):
        assert sign_ins.wait_s("10.0.0.1") == 0
        assert sign_ins.sign_in("wrong-token", "10.0.0.1") is None
    assert sign_ins.wait_s("10.0.0.1") == FAILURE_WINDOW_S
    assert sign_ins.wait_s("10.0.0.2") == 0  # per address
    clock.now += FAILURE_WINDOW_S / 2
    assert sign_ins.wait_s("10.0.0.1") == FAILURE_WINDOW_S / 2
    clock.now += FAILURE_WINDOW_S / 2 + 0.01
    assert sign_ins.wait_s("10.0.0.1") == 0
    assert sign_ins.sign_in(TOKEN, "10.0.0.1") == "alice"


def test_sessions_expire_and_one_time_tokens_work_once_within_their_hour() -> None:
    clock = Clock()
    sign_ins = SignIns({}, clock)
    assert not sign_ins.has_tokens
    once = sign_ins.one_time("local")
    assert sign_ins.sign_in(once, "a") == "local"
    assert sign_ins.sign_in(once, "a") is None
    late = sign_ins.one_time("local")
    clock.now += ONE_TIME_S + 1
    assert sign_ins.sign_in(late, "a") is None
    session = sign_ins.open("local")
    assert sign_ins.session(session) is not None
    assert sign_ins.session("made-up") is None and sign_ins.session(None) is None
    clock.now += SESSION_S
    assert sign_ins.session(session) is None


def test_charts_scale_to_the_largest_value_and_fill_days_without_usage() -> None:
    since = 86400.0 * 100  # 1970-04-11 00:00 UTC
    days = charts.days([UsageTotal(key="1970-04-13", cost=2.0)], since, 3)
    assert days == [("1970-04-12", 0.0), ("1970-04-13", 2.0), ("1970-04-14", 0.0)]
    columns = charts.columns(days, "per day")
    tallest = max(columns.shapes, key=lambda s: s.height)
    assert tallest.label == "1970-04-13" and tallest.height == charts.HEIGHT - 20 and tallest.text == "$2.00"
    bars = charts.bars([("cheap", 0.001), ("dear", 0.5)], "per model")
    assert [s.label for s in bars.shapes] == ["dear", "cheap"]
    assert bars.shapes[0].width > bars.shapes[1].width
    assert charts.columns([("d", 0.0)], "none").peak == 0.0


@pytest.mark.anyio
async def test_a_finished_run_nobody_watched_is_let_go_after_its_keep() -> None:
    """A run whose page was closed never has its stream read to the end: its own end still lets it go."""
    clock = Clock()
    watches = Watches(clock)
    ended = anyio.Event()
    first = Watched("fus_first", "alice", ("a/x",), "a/y", Redactor(()), run_done=ended)
    first.delta("a/x", "some text", False)
    watches.add(first)
    assert watches.get("fus_first", "alice") is first and watches.get("fus_first", "bob") is None
    ended.set()
    watches.add(Watched("fus_second", "alice", ("a/x",), "a/y", Redactor(())))
    assert watches.get("fus_first", "alice") is first  # ended just now: kept for a page that reloads
    assert first.news(Cursor()) == {"text": {"a/x": "some text"}, "steps": [], "done": True}
    clock.now += KEEP_S + 1
    watches.add(Watched("fus_third", "alice", ("a/x",), "a/y", Redactor(())))
    assert watches.get("fus_first", "alice") is None
    assert watches.get("fus_second", "alice") is not None  # still going: never let go for its age


@pytest.mark.anyio
async def test_a_secret_split_across_pieces_never_reaches_a_watcher() -> None:
    secret = "sk-or-v1-SECRET-0123456789abcdef"
    watched = Watched("fus_x", "alice", ("a/x",), "a/y", Redactor((secret,)))
    for piece in ("the key is sk-or-v1-SEC", "RET-0123456789", "abcdef indeed"):
        watched.delta("a/x", piece, False)
    watched.delta("a/x", "private reasoning", True)
    watched.finish()
    text = watched.news(Cursor())["text"]["a/x"]
    assert secret not in text and text.startswith("the key is ") and text.endswith(" indeed")
    assert "reasoning" not in text


def test_the_http_server_loads_no_template_or_markdown_module_until_the_lab_is_opened() -> None:
    names = "('jinja2', 'markdown_it', 'nh3')"
    code = f"import sys, fusion_mcp.http.app; print(sorted(m for m in {names} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"
