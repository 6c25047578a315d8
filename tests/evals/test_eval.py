"""``fusion-mcp eval`` end to end against the simulator: scripted members of known accuracy, the command run
as a user runs it (the console script), everything asserted on its files and on what the simulator received."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fusion_mcp.evals.grading import exact, parse_grade
from fusion_mcp.evals.questions import Question, QuestionSetError, load
from fusion_mcp.evals.report import wilson
from tests.conftest import API_KEY, child_env, console_script, sim_env
from tests.fakes.provider_sim import DEFAULT_USAGE, ProviderSim, Reply, priced
from tests.helpers import with_a_terminal

RIGHT, HALF, WRONG = "eval/right", "eval/half", "eval/wrong"
PANEL = (RIGHT, HALF, WRONG)
JUDGE, GRADER = "eval/judge", "eval/grader"
COST = DEFAULT_USAGE["cost"]
QUESTIONS = [{"id": f"n{i}", "question": f"What is {i} times 7?", "answer": str(i * 7)} for i in range(1, 7)] + [
    {"id": "c1", "question": "Which is a noble gas?", "choices": ["Nitrogen", "Argon", "Oxygen"], "answer": "B"},
    {"id": "c2", "question": "Which is a prime?", "choices": ["9", "15", "13"], "answer": "C"},
]
ANSWER = re.compile(r"Answer: (\S+)")


def truth(text: str) -> tuple[str, str] | None:
    """The question a request asks (its id) and its right answer, read from the question text it carries."""
    if m := re.search(r"What is (\d+) times 7\?", text):
        return f"n{m.group(1)}", str(int(m.group(1)) * 7)
    if "noble gas" in text:
        return "c1", "B"
    if "a prime" in text:
        return "c2", "C"
    return None


def wrong_of(right: str) -> str:
    return str(int(right) + 1) if right.isdigit() else ("A" if right != "A" else "B")


def user_text(body: dict[str, Any]) -> str:
    parts = []
    for m in body["messages"]:
        content = m.get("content")
        parts.append(content if isinstance(content, str) else json.dumps(content))
    return "\n".join(parts)


def member(kind: str):
    def reply(body: dict[str, Any]) -> Reply:
        found = truth(user_text(body))
        assert found is not None
        qid, right = found
        index = [q["id"] for q in QUESTIONS].index(qid)
        ok = kind == "right" or (kind == "half" and index % 2 == 0)
        return Reply(content=f"I worked it out.\nAnswer: {right if ok else wrong_of(right)}")

    return reply


def judge(body: dict[str, Any]) -> Reply:
    """The analyst: an analysis (the simulator builds it); then a final answer that follows the majority."""
    if body.get("response_format"):
        return Reply()
    votes = Counter(ANSWER.findall(user_text(body)))
    return Reply(content=f"The panel mostly agrees.\nAnswer: {votes.most_common(1)[0][0]}")


def script(sim: ProviderSim) -> None:
    sim.scripts[RIGHT] = member("right")
    sim.scripts[HALF] = member("half")
    sim.scripts[WRONG] = member("wrong")
    sim.scripts[JUDGE] = judge


def write_questions(path: Path, rows: list[dict[str, Any]] = QUESTIONS) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def env(sim: ProviderSim, home: Path, **extra: str) -> dict[str, str]:
    return child_env(**sim_env(sim, FUSION_HOME=str(home), FUSION_WEB_TOOLS="off", **extra))


def run_eval(sim: ProviderSim, tmp_path: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script(), "eval", *args],
        env=env(sim, tmp_path / "home", **extra),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def summary_of(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text())


def systems(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in data["systems"]}


def test_accuracies_costs_and_the_chart_are_what_the_script_implies(sim: ProviderSim, tmp_path: Path) -> None:
    script(sim)
    questions = write_questions(tmp_path / "q.jsonl")
    out = tmp_path / "out"
    done = run_eval(
        sim, tmp_path, str(questions), "--panel", ",".join(PANEL), "--analyst", JUDGE, "--out", str(out), "--yes"
    )
    assert done.returncode == 0, done.stderr
    data = summary_of(out)
    found = systems(data)
    assert list(found) == [*PANEL, "fusion"]
    n = len(QUESTIONS)
    half = sum(1 for i in range(n) if i % 2 == 0)
    assert [(found[s]["correct"], found[s]["total"]) for s in found] == [(n, n), (half, n), (0, n), (half, n)]
    assert found[RIGHT]["accuracy"] == 1.0 and found[WRONG]["accuracy"] == 0.0
    assert found[HALF]["accuracy"] == found["fusion"]["accuracy"] == round(half / n, 4)
    # Costs: a member alone is one request; fusion is three members and two analyst requests (analysis, answer).
    assert found[RIGHT]["cost_usd"] == pytest.approx(n * COST)
    assert found["fusion"]["cost_usd"] == pytest.approx(n * 5 * COST)
    assert len(sim.requests) == n * (3 + 5)
    assert data["run_id"].startswith("ev") and data["versus_best_member"]["best_member"] == RIGHT
    assert data["versus_best_member"]["member_right_fusion_wrong"] == [
        q["id"] for i, q in enumerate(QUESTIONS) if i % 2
    ]
    # The chart is an SVG image with one point per system.
    chart = ET.parse(out / "chart.svg").getroot()
    assert chart.tag == "{http://www.w3.org/2000/svg}svg"
    assert len(chart.findall("{http://www.w3.org/2000/svg}circle")) == 4
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == n * 4 and all(line["grade"]["reason"] for line in lines)
    assert "accuracy" in done.stdout and "fusion" in done.stdout and API_KEY not in done.stdout + done.stderr


def test_short_answers_are_graded_by_a_grader_that_never_sees_who_wrote_them(sim: ProviderSim, tmp_path: Path) -> None:
    rows = [{"id": "cap", "question": "What is the capital of Australia?", "answer": "Canberra", "kind": "short"}]
    for model in PANEL:
        sim.script(model, Reply(content="It is Canberra.\nAnswer: Canberra" if model != WRONG else "Answer: Sydney"))
    sim.scripts[JUDGE] = lambda body: Reply() if body.get("response_format") else Reply(content="Answer: Canberra")

    def grade(body: dict[str, Any]) -> Reply:
        text = user_text(body)
        predicted = text.split("<predicted_answer>")[1]
        return Reply(content="Matches the target.\nGRADE: A" if "Canberra" in predicted else "Wrong city.\nGRADE: B")

    sim.scripts[GRADER] = grade
    out = tmp_path / "out"
    questions = write_questions(tmp_path / "q.jsonl", rows)
    done = run_eval(
        sim,
        tmp_path,
        str(questions),
        "--panel",
        ",".join(PANEL),
        "--analyst",
        JUDGE,
        "--grader",
        GRADER,
        "--out",
        str(out),
        "--yes",
    )
    assert done.returncode == 0, done.stderr
    found = systems(summary_of(out))
    assert [found[s]["correct"] for s in found] == [1, 1, 0, 1]
    graded = sim.requests_for(GRADER)
    assert len(graded) == 4
    for request in graded:
        text = json.dumps(request.body["messages"])
        assert not any(name in text for name in (*PANEL, JUDGE, "fusion", "eval/")), text
        assert "tools" not in request.body  # the grader reads; it does not browse
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    # Each answer is on disk once had (its grade still to come), then again with its grade: the last one counts.
    assert sorted(line["system"] for line in lines if line["grade"] is None) == sorted((*PANEL, "fusion"))
    assert sorted(line["system"] for line in lines if line["grade"]) == sorted((*PANEL, "fusion"))
    assert {line["grade"]["reason"] for line in lines if line["grade"]} == {"Matches the target.", "Wrong city."}
    assert summary_of(out)["grading_cost_usd"] == pytest.approx(4 * COST)


def test_max_cost_stops_before_the_cap_is_passed(sim: ProviderSim, tmp_path: Path) -> None:
    script(sim)
    sim.catalogue = [priced(m) for m in (*PANEL, JUDGE)]
    out = tmp_path / "out"
    questions = write_questions(tmp_path / "q.jsonl")
    cap = 0.05
    done = run_eval(
        sim,
        tmp_path,
        str(questions),
        "--panel",
        ",".join(PANEL),
        "--analyst",
        JUDGE,
        "--out",
        str(out),
        "--yes",
        "--max-cost",
        str(cap),
        "--concurrency",
        "2",
        FUSION_MAX_COMPLETION_TOKENS="1000",
    )
    assert done.returncode == 1, done.stderr
    data = summary_of(out)
    assert data["stopped"] and "--max-cost $0.05" in data["stopped"]
    spent = sum(s["cost_usd"] or 0 for s in data["systems"])
    answered = sum(s["total"] for s in data["systems"])
    assert 0 < answered < len(QUESTIONS) * 4
    assert spent <= cap and len(sim.requests) * COST <= cap
    assert "stopped early" in done.stdout


def test_an_interrupted_eval_resumed_pays_for_no_answer_twice(sim: ProviderSim, tmp_path: Path) -> None:
    script(sim)
    slow = "n4"  # every request about this question hangs until the eval is interrupted

    def hang_on(kind: str):
        fast = member(kind)

        def reply(body: dict[str, Any]) -> Reply:
            found = truth(user_text(body))
            answer = fast(body)
            if found is not None and found[0] == slow and hanging:
                answer.latency = 60
            return answer

        return reply

    hanging = True
    for model, kind in zip(PANEL, ("right", "half", "wrong"), strict=True):
        sim.scripts[model] = hang_on(kind)
    out = tmp_path / "out"
    questions = write_questions(tmp_path / "q.jsonl")
    command = [console_script(), "eval", str(questions), "--panel", ",".join(PANEL), "--analyst", JUDGE]
    command += ["--out", str(out), "--yes", "--concurrency", "1"]
    with subprocess.Popen(
        command, env=env(sim, tmp_path / "home"), cwd=tmp_path, stderr=subprocess.PIPE, text=True
    ) as proc:
        results = out / "results.jsonl"
        deadline = time.monotonic() + 60
        while not (results.exists() and len(results.read_text().splitlines()) >= 12):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        # Interrupted once the 13th run (the first member alone on the question that hangs) is at the simulator.
        while not any((truth(user_text(r.body)) or ("",))[0] == slow for r in sim.requests_for(RIGHT)):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "--resume" in err
    eval_id = json.loads((out / "eval.json").read_text())["eval_id"]
    # The last line written is lost too (as if cut by the interruption): its run is found in the store.
    kept = results.read_text().splitlines()
    results.write_text("\n".join(kept[:-1]) + "\n")
    before = len(sim.requests)
    hanging = False
    done = run_eval(sim, tmp_path, "--resume", eval_id, "--yes")
    assert done.returncode == 0, done.stderr
    found = systems(summary_of(out))
    assert all(found[s]["total"] == len(QUESTIONS) for s in found)
    # Each question reached each member once alone and once inside fusion; only the run in flight at the
    # interruption (the first member alone on the question that hung: one run at a time) was asked again.
    asked = Counter((r.model, truth(user_text(r.body))[0]) for r in sim.requests if r.model in PANEL)  # type: ignore[index]
    for (model, qid), times in asked.items():
        assert times == (3 if (model, qid) == (RIGHT, slow) else 2), (model, qid, times)
    assert before < len(sim.requests)


def test_the_built_in_sample_set_runs_from_the_readme_command(sim: ProviderSim, tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    command = re.search(r"^fusion-mcp eval sample.*$", readme, re.MULTILINE)
    assert command is not None, "the README shows how to try eval on the sample set"
    args = command.group(0).split()[2:]
    done = run_eval(sim, tmp_path, *args, "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    data = summary_of(tmp_path / "out")
    assert data["questions"] == len(load("sample")) and {s["name"] for s in data["systems"]} >= {"fusion"}


def test_without_yes_and_no_terminal_nothing_is_spent(sim: ProviderSim, tmp_path: Path) -> None:
    questions = write_questions(tmp_path / "q.jsonl")
    done = run_eval(sim, tmp_path, str(questions), "--panel", ",".join(PANEL), "--analyst", JUDGE)
    assert done.returncode == 2 and "pass --yes" in done.stderr and sim.requests == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"question": "q"}\n', "line 1: answer: Field required"),
        ('{"question": "q", "answer": "Z", "choices": ["a", "b"]}\n', "answer must be the letter of a choice, A to B"),
        ('{"question": "q", "answer": "x", "kind": "open"}\n', "an open question needs a rubric"),
        ("not json\n", "line 1: not JSON"),
        (
            '{"id": "a", "question": "q", "answer": "1"}\n{"id": "a", "question": "r", "answer": "2"}\n',
            "question id 'a' appears twice",
        ),
    ],
)
def test_a_bad_question_file_is_named_with_its_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(QuestionSetError, match=re.escape(message)):
        load(str(path))


def test_the_public_sets_csv_files_load(tmp_path: Path) -> None:
    gpqa = tmp_path / "gpqa_diamond.csv"
    gpqa.write_text(
        "Record ID,Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\n"
        "r1,Which?,right,w1,w2,w3\n"
    )
    (q,) = load(str(gpqa))
    assert (
        q.kind == "choice"
        and q.choices[ord(q.answer) - ord("A")] == "right"
        and sorted(q.choices) == ["right", "w1", "w2", "w3"]
    )
    assert load(str(gpqa)) == [q]  # the same letters every time
    simpleqa = tmp_path / "simple_qa_test_set.csv"
    simpleqa.write_text('metadata,problem,answer\n"{}",Who?,Ada Lovelace\n')
    (s,) = load(str(simpleqa))
    assert (s.kind, s.answer, s.graded_by_model) == ("short", "Ada Lovelace", True)


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("Reasoning...\nAnswer: B", "correct"),
        ("**Answer:** (B)", "correct"),
        ("Answer: C", "incorrect"),
        ("I cannot tell.", "not_attempted"),
        ("so the answer is clearly (B)", "correct"),
    ],
)
def test_choice_answers_are_matched_on_their_stated_letter(answer: str, label: str) -> None:
    question = Question(question="q", choices=("x", "y", "z"), answer="B")
    assert exact(question, answer).label == label


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("Answer: 1,157.63", "correct"),
        ("Answer: 1157.6", "correct"),
        ("Answer: 1160", "incorrect"),
        ("none", "not_attempted"),
    ],
)
def test_number_answers_match_within_a_tenth_of_a_percent(answer: str, label: str) -> None:
    assert exact(Question(question="q", answer="1157.63"), answer).label == label


def test_a_grader_reply_without_a_grade_is_not_a_grade() -> None:
    assert parse_grade("It matches.\nGRADE: C", "g").label == "not_attempted"
    with pytest.raises(ValueError, match="no 'GRADE: A\\|B\\|C' line"):
        parse_grade("looks right to me", "g")


def test_the_interval_is_wilsons() -> None:
    low, high = wilson(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.49, 0.943)
    assert wilson(0, 0) == (0.0, 1.0)


def test_an_unknown_model_is_refused_before_anything_is_spent(sim: ProviderSim, tmp_path: Path) -> None:
    sim.catalogue = [priced(m) for m in (RIGHT, HALF, JUDGE)]
    questions = write_questions(tmp_path / "q.jsonl")
    done = run_eval(sim, tmp_path, str(questions), "--panel", ",".join(PANEL), "--analyst", JUDGE, "--yes")
    assert done.returncode == 2
    assert f"unknown model id '{WRONG}'" in done.stderr and sim.requests == []


def test_a_member_that_fails_counts_as_wrong_and_is_named(sim: ProviderSim, tmp_path: Path) -> None:
    script(sim)
    sim.script(WRONG, Reply(status=500, error_message="the model is down"))
    out = tmp_path / "out"
    questions = write_questions(tmp_path / "q.jsonl", [QUESTIONS[0], QUESTIONS[2]])
    done = run_eval(
        sim, tmp_path, str(questions), "--panel", ",".join(PANEL), "--analyst", JUDGE, "--out", str(out), "--yes"
    )
    assert done.returncode == 0, done.stderr
    found = systems(summary_of(out))
    assert (found[WRONG]["correct"], found[WRONG]["failed"], found[WRONG]["total"]) == (0, 2, 2)
    assert found["fusion"]["correct"] == 2  # the two members left agree, and are right, on both
    failed = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert all("down" in (r["error"] or "") for r in failed if r["system"] == WRONG)
    assert "(2 failed)" in done.stdout


def test_a_writer_writes_fusions_answer_from_the_analysis(sim: ProviderSim, tmp_path: Path) -> None:
    script(sim)
    writer = "eval/writer"
    sim.scripts[writer] = lambda body: Reply(content="From the analysis.\nAnswer: 7")
    out = tmp_path / "out"
    questions = write_questions(tmp_path / "q.jsonl", QUESTIONS[:1])
    done = run_eval(
        sim,
        tmp_path,
        str(questions),
        "--panel",
        ",".join(PANEL),
        "--analyst",
        JUDGE,
        "--writer",
        writer,
        "--out",
        str(out),
        "--yes",
    )
    assert done.returncode == 0, done.stderr
    (asked,) = sim.requests_for(writer)
    text = user_text(asked.body)
    assert "<analysis>" in text and "consensus" in text and "Answer: 7" in text  # the panel's answers and the analysis
    assert len(sim.requests_for(JUDGE)) == 1  # the analysis only: the writer writes the answer
    found = systems(summary_of(out))
    assert found["fusion"]["correct"] == 1 and found["fusion"]["cost_usd"] == pytest.approx(5 * COST)


def test_a_terminal_sees_one_row_per_system_redrawn_in_place(sim: ProviderSim, tmp_path: Path) -> None:
    script(sim)
    questions = write_questions(tmp_path / "q.jsonl", QUESTIONS[:2])
    command = [console_script(), "eval", str(questions), "--panel", ",".join(PANEL), "--analyst", JUDGE, "--yes"]
    proc, text = with_a_terminal(command, env=env(sim, tmp_path / "home"), timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, text
    assert "\x1b[2K" in text and "\x1b[4F" in text  # four rows (three members and fusion) redrawn in place
    assert re.search(rf"{re.escape(RIGHT)} +2/2 answered +2 correct", text)
    assert "[n1]" not in text  # not the plain lines


def test_a_resume_refuses_changed_questions_and_a_new_eval_refuses_a_used_folder(
    sim: ProviderSim, tmp_path: Path
) -> None:
    script(sim)
    out = tmp_path / "out"
    questions = write_questions(tmp_path / "q.jsonl", QUESTIONS[:1])
    first = run_eval(
        sim, tmp_path, str(questions), "--panel", ",".join(PANEL), "--analyst", JUDGE, "--out", str(out), "--yes"
    )
    assert first.returncode == 0, first.stderr
    eval_id = summary_of(out)["run_id"]
    asked = len(sim.requests)
    again = run_eval(
        sim, tmp_path, str(questions), "--panel", ",".join(PANEL), "--analyst", JUDGE, "--out", str(out), "--yes"
    )
    assert again.returncode == 2 and f"already holds eval {eval_id}: go on with it (--resume {eval_id})" in again.stderr
    write_questions(questions, QUESTIONS[1:2])
    changed = run_eval(sim, tmp_path, "--resume", eval_id, "--yes")
    assert changed.returncode == 2 and "changed since eval" in changed.stderr
    assert run_eval(sim, tmp_path, "--resume", "evnothere", "--yes").stderr.endswith(
        "no eval 'evnothere' to resume (give its folder with --out)\n"
    )
    assert len(sim.requests) == asked


def test_an_eval_across_providers_sends_each_member_to_its_own(sim: ProviderSim, tmp_path: Path) -> None:
    """A vendor key and a keyless local server beside the default provider: each member alone and inside fusion
    goes to its own provider with its own key, and the table names the members as the user spelled them."""
    vendor, local = ProviderSim().start(), ProviderSim().start()
    vendor.valid_key = "sk-vendor-0123456789abcdef-do-not-leak"
    try:
        vendor.scripts["gpt-5"] = member("right")
        local.scripts["qwen3:8b"] = member("wrong")
        sim.scripts[HALF] = member("half")
        sim.scripts[JUDGE] = judge
        providers = {
            "work": {"template": "openai", "base_url": vendor.base_url},
            "local": {"template": "ollama", "base_url": local.base_url},
        }
        panel = ("work:gpt-5", HALF, "local:qwen3:8b")
        out = tmp_path / "out"
        questions = write_questions(tmp_path / "q.jsonl", QUESTIONS[:4])
        done = run_eval(
            sim,
            tmp_path,
            str(questions),
            "--panel",
            ",".join(panel),
            "--analyst",
            JUDGE,
            "--out",
            str(out),
            "--yes",
            FUSION_PROVIDERS=json.dumps(providers),
            OPENAI_API_KEY=vendor.valid_key,
        )
        assert done.returncode == 0, done.stderr
        found = systems(summary_of(out))
        assert [(name, found[name]["correct"]) for name in found] == [
            (panel[0], 4),
            (HALF, 2),
            (panel[2], 0),
            ("fusion", 2),
        ]
        # Alone and inside fusion: each question twice at each provider, with its own key (none at the local one).
        assert len(vendor.requests) == len(local.requests) == 8
        assert {r.headers.get("authorization") for r in vendor.requests} == {f"Bearer {vendor.valid_key}"}
        assert not any("authorization" in r.headers for r in local.requests)
        assert not any(r.model in ("gpt-5", "qwen3:8b") for r in sim.requests)
    finally:
        vendor.stop()
        local.stop()


def test_a_resume_takes_a_new_max_cost_and_refuses_flags_that_would_change_the_eval(
    sim: ProviderSim, tmp_path: Path
) -> None:
    """An eval --max-cost stopped goes on with --resume and a higher cap, paying only for what it had not had."""
    script(sim)
    sim.catalogue = [priced(m) for m in (*PANEL, JUDGE)]
    out = tmp_path / "out"
    questions = write_questions(tmp_path / "q.jsonl")
    tokens = {"FUSION_MAX_COMPLETION_TOKENS": "1000"}
    args = [str(questions), "--panel", ",".join(PANEL), "--analyst", JUDGE, "--out", str(out), "--yes"]
    stopped = run_eval(sim, tmp_path, *args, "--max-cost", "0.03", **tokens)
    assert stopped.returncode == 1 and summary_of(out)["stopped"]
    eval_id = summary_of(out)["run_id"]
    changed = run_eval(sim, tmp_path, "--resume", eval_id, "--yes", "--panel", RIGHT, **tokens)
    assert (
        changed.returncode == 2
        and "--panel: eval " in changed.stderr
        and "only --max-cost and --concurrency" in (changed.stderr)
    )
    paid = len(sim.requests)
    done = run_eval(sim, tmp_path, "--resume", eval_id, "--yes", "--max-cost", "5", **tokens)
    assert done.returncode == 0, done.stderr
    found = systems(summary_of(out))
    assert all(found[s]["total"] == len(QUESTIONS) for s in found)
    assert len(sim.requests) == len(QUESTIONS) * (3 + 5)  # nothing paid twice: the first part plus the rest
    assert paid < len(sim.requests)


def test_every_model_id_is_checked_before_spending_even_after_an_unpriced_one(sim: ProviderSim, tmp_path: Path) -> None:
    sim.catalogue = [{"id": RIGHT}, priced(HALF), priced(JUDGE)]  # RIGHT is listed without a price; WRONG not at all
    questions = write_questions(tmp_path / "q.jsonl")
    done = run_eval(sim, tmp_path, str(questions), "--panel", ",".join(PANEL), "--analyst", JUDGE, "--yes")
    assert done.returncode == 2 and f"unknown model id '{WRONG}'" in done.stderr and sim.requests == []


def test_an_unusable_out_folder_or_plan_is_named_not_a_traceback(sim: ProviderSim, tmp_path: Path) -> None:
    questions = write_questions(tmp_path / "q.jsonl")
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    done = run_eval(sim, tmp_path, str(questions), "--panel", RIGHT, "--analyst", JUDGE, "--out", str(a_file), "--yes")
    assert done.returncode == 2 and "is a file, not a folder" in done.stderr and "Traceback" not in done.stderr
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "eval.json").write_bytes(b"\xff\xfe not json")
    done = run_eval(sim, tmp_path, "--resume", "evdamaged", "--out", str(damaged), "--yes")
    assert done.returncode == 2 and "cannot be read" in done.stderr and "Traceback" not in done.stderr
    (damaged / "eval.json").write_text('{"eval_id": 3}')
    done = run_eval(sim, tmp_path, "--resume", "evdamaged", "--out", str(damaged), "--yes")
    assert done.returncode == 2 and "is not an eval's plan" in done.stderr and "Traceback" not in done.stderr
    assert sim.requests == []
