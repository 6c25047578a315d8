"""The web lab over real HTTP (a plain client that behaves as a browser does): who gets in, what each request
must carry, and what a principal can reach of another's.

The server is the whole HTTP app (``build_app``) on a loopback port with two principals, alice and bob, and the
loopback provider simulator as the panel's provider.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import API_KEY, PANEL, shared_env, sim_env
from tests.fakes.provider_sim import ProviderSim, Reply, priced
from tests.lab.lab_client import ALICE, BOB, TOKENS, Lab, LabClient, lab_server

PAGES = ("/lab", "/lab/ask", "/lab/history", "/lab/usage", "/lab/runs/fus_0123456789abcdef", "/lab/compare")


@pytest.fixture(scope="module")
def lab(_sim: ProviderSim) -> Iterator[Lab]:
    with lab_server(shared_env(_sim, FUSION_HTTP_TOKENS=TOKENS, FUSION_LAB_OPERATORS="alice")) as running:
        yield running


@pytest.fixture
def alice(lab: Lab, sim: ProviderSim) -> Iterator[LabClient]:
    with LabClient(lab.base) as client:
        assert client.sign_in(ALICE).status_code == 303
        yield client


@pytest.fixture
def bob(lab: Lab, sim: ProviderSim) -> Iterator[LabClient]:
    with LabClient(lab.base) as client:
        assert client.sign_in(BOB).status_code == 303
        yield client


def test_without_a_session_every_page_is_the_sign_in_page(lab: Lab, sim: ProviderSim) -> None:
    with LabClient(lab.base) as client:
        for path in PAGES:
            answer = client.get(path)
            assert (answer.status_code, answer.headers["location"]) == (303, "/lab/signin"), path
        answer = client.get("/lab/signin")
        assert answer.status_code == 200
        assert 'name="token"' in answer.text and "Sign in" in answer.text
        # The live stream and every form are refused too: a POST gets the sign-in page, and nothing runs.
        assert client.get("/lab/runs/fus_0123456789abcdef/events").status_code == 401
        refused = client.post("/lab/runs", data={"prompt": "q"}, headers={"origin": lab.base})
        assert refused.status_code == 403 and 'name="token"' in refused.text
    assert sim.requests == []


def test_a_bearer_header_is_no_way_in(lab: Lab, sim: ProviderSim) -> None:
    """The lab takes its session cookie only: a bearer (which a page cannot set for a navigation) does not sign in."""
    with LabClient(lab.base) as client:
        answer = client.get("/lab/ask", headers={"authorization": f"Bearer {ALICE}"})
        assert (answer.status_code, answer.headers["location"]) == (303, "/lab/signin")


def test_signing_in_sets_a_strict_http_only_session_cookie_for_the_lab_only(lab: Lab, sim: ProviderSim) -> None:
    with LabClient(lab.base) as client:
        answer = client.sign_in(ALICE)
        assert (answer.status_code, answer.headers["location"]) == (303, "/lab/ask")
        cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("fusion_lab_session="))
        parts = {p.strip().lower() for p in cookie.split(";")}
        assert {"httponly", "path=/lab", "samesite=strict"} <= parts
        assert "secure" not in parts  # plain http on loopback; over TLS the cookie says Secure
        assert ALICE not in answer.text and ALICE not in cookie
        page = client.get("/lab/ask")
        assert page.status_code == 200 and "Signed in as <strong>alice</strong>" in page.text
        # Signing out ends the session on the server: the old cookie no longer works.
        old = client.cookies.get("fusion_lab_session")
        assert client.form("/lab/signout", {}).status_code == 303
    with LabClient(lab.base) as other:
        other.cookies.set("fusion_lab_session", old or "", path="/lab")
        assert other.get("/lab/ask").status_code == 303


def test_a_wrong_token_is_refused_without_being_echoed_and_then_rate_limited(
    sim: ProviderSim, caplog: pytest.LogCaptureFixture
) -> None:
    """A server of its own: the address it locks out is the one every other test signs in from."""
    caplog.set_level(logging.INFO)
    wrong = "not-the-token-but-a-guess-0123"
    with lab_server(shared_env(sim, FUSION_HTTP_TOKENS=TOKENS)) as running, LabClient(running.base) as client:
        for _ in range(5):
            answer = client.sign_in(wrong)
            assert answer.status_code == 401
            assert "that token is not a token of this server" in answer.text
            assert wrong not in answer.text and "fusion_lab_session" not in answer.headers.get("set-cookie", "")
        # The sixth try from this address is refused before its token is looked at, even a right one.
        limited = client.sign_in(ALICE)
        assert limited.status_code == 429
        assert "too many failed sign-ins from your address: try again in" in limited.text
        assert "fusion_lab_session" not in limited.headers.get("set-cookie", "")
    assert "lab: a failed sign-in from 127.0.0.1" in caplog.text
    assert wrong not in caplog.text and ALICE not in caplog.text


def test_a_sign_in_needs_its_form_token_and_an_origin_of_this_server(lab: Lab, sim: ProviderSim) -> None:
    with LabClient(lab.base) as client:
        client.get("/lab/signin")
        no_csrf = client.post("/lab/signin", data={"token": ALICE}, headers={"origin": lab.base})
        assert no_csrf.status_code == 403 and "the sign-in form has expired" in no_csrf.text
        csrf = client.csrf("/lab/signin")
        no_origin = client.post("/lab/signin", data={"csrf": csrf, "token": ALICE})
        assert no_origin.status_code == 403 and "no Origin header came with it" in no_origin.text
        # Another allowed origin (the guard's allow-list has every loopback port) is still another site's page.
        elsewhere = client.post(
            "/lab/signin", data={"csrf": csrf, "token": ALICE}, headers={"origin": "http://localhost:1"}
        )
        assert elsewhere.status_code == 403 and "came from a page of another site" in elsewhere.text
        foreign = client.post(
            "/lab/signin", data={"csrf": csrf, "token": ALICE}, headers={"origin": "https://evil.example"}
        )
        assert foreign.status_code == 403 and "Origin are refused" in foreign.text  # the guard's own refusal
        assert client.get("/lab/ask").status_code == 303


def test_every_post_needs_the_sessions_csrf_token_and_origin(alice: LabClient, sim: ProviderSim) -> None:
    base = alice.base
    for data, headers, says in (
        ({"prompt": "q"}, {"origin": base}, "CSRF token is missing or stale"),
        ({"prompt": "q", "csrf": "forged"}, {"origin": base}, "CSRF token is missing or stale"),
        ({"prompt": "q", "csrf": alice.csrf("/lab/ask")}, {}, "no Origin header came with it"),
    ):
        answer = alice.post("/lab/runs", data=data, headers=headers)
        assert answer.status_code == 403 and says in answer.text, answer.text[:400]
    # A JSON body is not a form: no fields, so no CSRF token.
    as_json = alice.post("/lab/runs", json={"prompt": "q", "csrf": alice.csrf("/lab/ask")}, headers={"origin": base})
    assert as_json.status_code == 403
    assert sim.requests == []


def test_every_answer_carries_the_content_security_policy(alice: LabClient) -> None:
    for path in ("/lab/ask", "/lab/history", "/lab/usage", "/lab/signin", "/lab/static/lab.js", "/lab/static/nope"):
        headers = alice.get(path).headers
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "same-origin"
    assert alice.get("/lab/static/lab.js").headers["content-type"].startswith("text/javascript")
    assert alice.get("/lab/static/../templates/base.html").status_code == 404


def test_a_form_the_rules_refuse_names_the_field_and_starts_nothing(alice: LabClient, sim: ProviderSim) -> None:
    answer = alice.form("/lab/runs", {"prompt": "q", "max_tool_calls": "many"})
    assert answer.status_code == 400
    assert "invalid argument max_tool_calls: must be" in answer.text
    assert 'id="max_tool_calls" name="max_tool_calls" inputmode="numeric" value="many"' in answer.text
    assert 'aria-invalid="true"' in answer.text
    answer = alice.form("/lab/runs", {"prompt": "q", "panel": "not a model id"})
    assert answer.status_code == 400 and "invalid argument analysis_models" in answer.text
    answer = alice.form("/lab/runs", {"prompt": "   "})
    assert answer.status_code == 400 and "invalid argument prompt" in answer.text
    assert sim.requests == []


def test_a_run_streams_to_its_watcher_then_reads_as_five_buckets(alice: LabClient, sim: ProviderSim) -> None:
    sim.script(PANEL[1], Reply(content="Streaming **answer** in pieces of text", chunk_delay=0.02))
    run_id = alice.ask(prompt="What is 6 x 7?")
    events = alice.events(run_id)
    streamed = "".join(str(e["text"].get(PANEL[1], "")) for e in events)  # type: ignore[union-attr]
    assert streamed == "Streaming **answer** in pieces of text"
    kinds = [s["kind"] for e in events for s in e["steps"]]  # type: ignore[union-attr]
    assert kinds[0] == "started" and kinds.count("member_answered") == 3 and "analyst_done" in kinds
    assert events[-1]["done"] is True
    page = alice.get(f"/lab/runs/{run_id}")
    assert page.status_code == 200
    for bucket in ("Consensus", "Contradictions", "Partial coverage", "Unique insights", "Blind spots"):
        assert bucket in page.text
    assert "Streaming <strong>answer</strong> in pieces of text" in page.text
    assert 'href="#member--openai-gpt-latest"' in page.text  # points name members: links to their answers
    assert "Cost and time per member" in page.text


def test_another_principals_run_is_refused_everywhere(alice: LabClient, bob: LabClient, sim: ProviderSim) -> None:
    sim.script(PANEL[1], Reply(content="slow", latency=3))
    run_id = alice.ask(prompt="the own question of alice")
    for path in (f"/lab/runs/{run_id}", f"/lab/compare?run={run_id}&run={run_id}x"):
        answer = bob.get(path)
        assert answer.status_code == 404, path
        assert "the own question of alice" not in answer.text
    assert "no run" in bob.get(f"/lab/runs/{run_id}").text
    assert bob.get(f"/lab/runs/{run_id}/events").status_code == 404
    # bob's cancel does not stop alice's run, and bob's history does not list it.
    assert bob.form(f"/lab/runs/{run_id}/cancel", {}).status_code == 303
    assert run_id not in bob.get("/lab/history").text
    events = alice.events(run_id)
    assert events[-1]["done"] is True
    page = alice.get(f"/lab/runs/{run_id}")
    assert "error: cancelled" not in page.text and "the own question of alice" in page.text
    assert run_id in alice.get("/lab/history").text


def test_cancel_stops_the_run_and_the_page_says_so(alice: LabClient, sim: ProviderSim) -> None:
    for model in PANEL:
        sim.script(model, Reply(content="never finished", latency=30))
    run_id = alice.ask(prompt="a question to cancel")
    watching = alice.get(f"/lab/runs/{run_id}")
    assert "Cancel run" in watching.text and f'data-run-events="/lab/runs/{run_id}/events"' in watching.text
    answer = alice.form(f"/lab/runs/{run_id}/cancel", {}, page=f"/lab/runs/{run_id}")
    assert (answer.status_code, answer.headers["location"]) == (303, f"/lab/runs/{run_id}")
    assert alice.events(run_id)[-1]["done"] is True
    page = alice.get(f"/lab/runs/{run_id}")
    assert "error: cancelled" in page.text and "the run was cancelled in the lab" in page.text


def test_a_member_echoing_the_key_never_shows_it(alice: LabClient, sim: ProviderSim) -> None:
    sim.script(PANEL[2], Reply(content=f"the key is {API_KEY} indeed", chunk_delay=0.01))
    run_id = alice.ask(prompt="leak?")
    events = alice.events(run_id)
    streamed = "".join(str(e["text"].get(PANEL[2], "")) for e in events)  # type: ignore[union-attr]
    assert API_KEY not in streamed and "the key is" in streamed
    for path in (f"/lab/runs/{run_id}", "/lab/history"):
        assert API_KEY not in alice.get(path).text


def test_history_search_and_compare(alice: LabClient, sim: ProviderSim) -> None:
    first = alice.ask(prompt="Which sorting algorithm is stable?", panel=PANEL[1])
    alice.events(first)
    second = alice.ask(prompt="Which sorting algorithm is stable?", panel=f"{PANEL[2]},{PANEL[0]}")
    alice.events(second)
    found = alice.get("/lab/history", params={"q": "SORTING algorithm"}).text
    assert first in found and second in found
    sim.script(PANEL[1], Reply(content="Merge sort keeps equal keys in order."))
    third = alice.ask(prompt="Name one.", panel=PANEL[1])
    alice.events(third)
    in_answer = alice.get("/lab/history", params={"q": "equal keys"}).text  # only an answer says it
    assert third in in_answer and first not in in_answer
    by_model = alice.get("/lab/history", params={"q": "sorting", "model": "gemini"}).text
    assert second in by_model and first not in by_model
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert first in alice.get("/lab/history", params={"since": today, "until": today}).text
    assert first not in alice.get("/lab/history", params={"until": "2020-01-01"}).text
    bad = alice.get("/lab/history", params={"since": "yesterday"}).text
    assert "dates must be written YYYY-MM-DD" in bad
    compared = alice.get(f"/lab/compare?run={first}&run={second}")
    assert compared.status_code == 200 and compared.text.count("Which sorting algorithm is stable?") == 2
    one = alice.get(f"/lab/compare?run={first}")
    assert one.status_code == 400 and "choose exactly two runs to compare (you chose 1)" in one.text


def test_usage_charts_and_the_operator_view(alice: LabClient, bob: LabClient, sim: ProviderSim) -> None:
    bob.events(bob.ask(prompt="bob spends"))
    alice.events(alice.ask(prompt="alice spends"))
    mine = alice.get("/lab/usage").text
    assert mine.count("<svg") == 3 and "spend per principal" in mine  # alice is an operator
    assert ">bob</th>" in mine
    theirs = bob.get("/lab/usage", params={"days": "7"}).text
    assert theirs.count("<svg") == 2 and "spend per principal" not in theirs and ">alice</th>" not in theirs
    assert 'option value="7" selected' in theirs


def test_over_tls_the_cookies_say_secure(lab: Lab, sim: ProviderSim) -> None:
    """Behind a TLS proxy the browser's Origin is https: the session cookie is then Secure."""
    host = lab.base.removeprefix("http://")
    with LabClient(lab.base) as client:
        csrf = client.csrf("/lab/signin")
        answer = client.post("/lab/signin", data={"csrf": csrf, "token": ALICE}, headers={"origin": f"https://{host}"})
        assert answer.status_code == 303
        cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("fusion_lab_session="))
        assert "secure" in {p.strip().lower() for p in cookie.split(";")}


def worst_case(page: str) -> float:
    found = re.search(r"Worst-case cost: <strong>\$([0-9.]+)</strong>", page)
    assert found, page
    return float(found[1])


def test_the_estimate_reads_the_catalogue_and_the_files_and_runs_nothing(sim: ProviderSim, tmp_path: Path) -> None:
    """A server of its own: it reads this test's catalogue (prices), and has a files root."""
    root = tmp_path / "docs"
    root.mkdir()
    (root / "notes.txt").write_text("x" * 35_000)
    sim.catalogue = [priced(m, prompt=1e-6, completion=1e-5) for m in PANEL]
    env = sim_env(sim, FUSION_HTTP_TOKENS=TOKENS, FUSION_FILES_ROOTS=str(root), FUSION_MAX_COST_USD="5")
    with lab_server(env) as running, LabClient(running.base) as client:
        assert client.sign_in(ALICE).status_code == 303
        plain = client.form("/lab/estimate", {"prompt": "What?"})
        assert plain.status_code == 200
        cost = worst_case(plain.text)
        with_file = client.form("/lab/estimate", {"prompt": "What?", "files": str(root / "notes.txt")})
        more = worst_case(with_file.text)
        assert more > cost  # 10,000 tokens more for each member and the analyst
        outside = client.form("/lab/estimate", {"prompt": "What?", "files": "/etc/hostname"})
        assert outside.status_code == 400 and "/etc/hostname" in outside.text and 'id="files"' in outside.text
        unknown = client.form("/lab/estimate", {"prompt": "What?", "panel": "acme/unknown-model"})
        assert unknown.status_code == 409
        assert (
            "unknown model id &#39;acme/unknown-model&#39;: the provider&#39;s catalogue does not list it"
            in unknown.text
        )
        assert 'value="acme/unknown-model"' in unknown.text  # the form keeps what was typed
    assert [r for r in sim.requests if r.body] == []  # no chat request: nothing ran


def test_retries_and_failures_show_in_their_members_column(alice: LabClient, sim: ProviderSim) -> None:
    sim.script(PANEL[1], Reply(status=429, retry_after="0"), Reply(content="answered after a retry"))
    sim.script(PANEL[2], Reply(status=400, error_message="this model refuses"))
    run_id = alice.ask(prompt="retry and fail")
    steps = [s for e in alice.events(run_id) for s in e["steps"]]  # type: ignore[union-attr]
    retried = [s for s in steps if s["kind"] == "retry"]
    assert [s["model"] for s in retried] == [PANEL[1]]
    failed = [s for s in steps if s["kind"] == "member_failed"]
    assert [s["model"] for s in failed] == [PANEL[2]] and "this model refuses" in str(failed[0]["error"])
    page = alice.get(f"/lab/runs/{run_id}").text
    assert "answered after a retry" in page and "Failed:" in page and "this model refuses" in page


def test_ask_again_fills_the_form_with_ones_own_run_only(alice: LabClient, bob: LabClient, sim: ProviderSim) -> None:
    run_id = alice.ask(prompt="Is Rust memory safe?", context="for a kernel", panel=PANEL[1], max_tool_calls="2")
    alice.events(run_id)
    assert f'href="/lab/ask?again={run_id}"' in alice.get(f"/lab/runs/{run_id}").text
    form = alice.get("/lab/ask", params={"again": run_id}).text
    assert ">Is Rust memory safe?</textarea>" in form and ">for a kernel</textarea>" in form
    assert f'id="panel" name="panel" value="{PANEL[1]}"' in form and 'value="2"' in form
    theirs = bob.get("/lab/ask", params={"again": run_id}).text
    assert "Is Rust memory safe?" not in theirs and "for a kernel" not in theirs


def test_an_estimate_waits_for_a_run_slot_like_a_run(sim: ProviderSim) -> None:
    """The estimate's catalogue look-ups take a run slot: with every slot taken, it is refused as busy."""
    env = shared_env(sim, FUSION_HTTP_TOKENS=TOKENS, FUSION_MAX_CONCURRENT="1", FUSION_QUEUE_TIMEOUT_S="0.2")
    for model in PANEL:
        sim.script(model, Reply(content="slow", latency=30))
    with lab_server(env) as running, LabClient(running.base) as client:
        assert client.sign_in(ALICE).status_code == 303
        run_id = client.ask(prompt="holds the only slot")
        deadline = time.monotonic() + 10
        while not sim.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        busy = client.form("/lab/estimate", {"prompt": "how much?"})
        assert busy.status_code == 409
        assert "server busy: every run slot (FUSION_MAX_CONCURRENT) is taken" in busy.text
        assert client.form(f"/lab/runs/{run_id}/cancel", {}).status_code == 303


def test_a_sign_in_link_takes_one_time_tokens_only_and_never_swaps_a_session_by_itself(sim: ProviderSim) -> None:
    """Login CSRF: bob mails alice ``/lab/signin?once=<bob's bearer token>``; her browser must not become bob's
    (her questions would land in his history). And a browser already signed in is asked, not switched."""
    with lab_server(sim_env(sim, FUSION_HTTP_TOKENS=TOKENS)) as lab:
        with LabClient(lab.base) as victim:
            link = f"/lab/signin?once={BOB}"
            assert "data-autosubmit" in victim.get(link).text  # a fresh browser sends a link's form by itself
            answer = victim.form("/lab/signin", {"once": BOB}, page=link)
            assert answer.status_code == 401 and "fusion_lab_session" not in victim.cookies
        once = lab.sign_ins.one_time("bob")
        with LabClient(lab.base) as alice:
            assert alice.sign_in(ALICE).status_code == 303
            page = alice.get(f"/lab/signin?once={once}")
            assert page.status_code == 200 and "data-autosubmit" not in page.text
            assert "You are signed in as <strong>alice</strong>" in page.text
        with LabClient(lab.base) as fresh:
            assert fresh.form("/lab/signin", {"once": once}, page=f"/lab/signin?once={once}").status_code == 303
        with LabClient(lab.base) as again:
            assert again.form("/lab/signin", {"once": once}, page=f"/lab/signin?once={once}").status_code == 401
