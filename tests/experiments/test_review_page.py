"""The review page in a real headless browser (Debian's chromium driven by Playwright: the ``browser``
fixture of tests/conftest.py) over a real store: the queue order, labelling with the keyboard,
comments, corrections, Japanese text."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from experiments.review_page import make_server
from experiments.store import Store
from tests.experiments.review_seed import seed_store

ARTIFACTS = Path(os.environ.get("PIPEC_TEST_ARTIFACTS") or Path(__file__).resolve().parents[2] / "test-artifacts")
REVIEWER = "花子 Hanako"


@pytest.fixture
def served(tmp_path):
    path = tmp_path / "store.duckdb"
    seeded = seed_store(path)
    server = make_server(lambda read_only: Store.open(path, read_only=read_only), port=0, reviewer=REVIEWER,
                         reviewer_fixed=True, store_label=str(path))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, seeded
    server.shutdown()
    server.server_close()


def _query(path: Path, sql: str, params: list | None = None) -> list[dict]:
    with Store.open(path, read_only=True) as store:
        return store.query(sql, params or [])


def _open(browser, server):
    page = browser.new_page(locale="ja-JP", viewport={"width": 1400, "height": 1000})
    page.goto(server.url + "/")
    page.wait_for_selector("section.item")
    return page


def _save(page, key: str) -> None:
    from playwright.sync_api import expect

    page.locator("body").click(position={"x": 5, "y": 5})  # leave any text box: the shortcuts apply
    with page.expect_navigation():  # saving reloads the item with the new label shown
        page.keyboard.press(key)
    expect(page.locator("#status")).to_contain_text("Saved:")


def test_disagreements_come_first_then_the_lowest_scores(browser, served):
    server, seeded = served
    page = _open(browser, server)
    queue = page.locator("#queue a").evaluate_all("links => links.map(a => a.dataset.trace)")
    assert set(queue[:3]) == set(seeded.disagreements)
    assert queue[3] == "t09"  # unreviewed, the judge failed it (score 0); the rest score 1, newest first
    assert queue[4:] == ["t08", "t06", "t04", "t02"]
    assert not set(queue) & set(seeded.agreed)  # reviewed and agreed: not in the open queue
    item = page.locator("section.item")
    assert item.get_attribute("data-trace") == queue[0]
    reply = page.locator("article.call[data-node='reply']")
    assert "judge ≠ human" in reply.inner_text()
    assert "focus" in (reply.get_attribute("class") or "")  # the label goes to the disagreeing call


def test_reviewing_five_items_stores_exactly_those_labels_and_corrections(browser, served):
    from playwright.sync_api import expect

    server, seeded = served
    started = datetime.now(UTC)
    page = _open(browser, server)
    japanese = "返信が丁寧ではありません。まず謝罪し、具体的な日付を伝えてください。"
    # (key, comment, node to label, corrected node -> text)
    plan = [
        ("f", japanese, "reply", {"reply": "ご不便をおかけして大変申し訳ございません。商品は明日お届けします。"}),
        ("p", "", "reply", {}),
        ("f", "the category is wrong, so the reply is too", "reply", {"classify": "account"}),
        ("p", "fine", "reply", {}),
        ("p", "", "classify", {}),
    ]
    reviewed = []
    for number, (key, comment, node, corrections) in enumerate(plan):
        trace_id = page.locator("section.item").get_attribute("data-trace")
        reviewed.append(trace_id)
        page.locator(f"article.call[data-node='{node}'] h3").click()
        for corrected, text in corrections.items():
            card = page.locator(f"article.call[data-node='{corrected}']")
            card.locator("summary").click()
            card.locator("textarea.correction").fill(text)
        if comment:
            page.locator("#comment").fill(comment)
        if number == 1:  # typing a 'p' or an 'f' in a text box is text, not a shortcut
            page.locator("#comment").press_sequentially("pf")
            expect(page.locator("#status")).not_to_contain_text("Saved")
            page.locator("#comment").fill("")
        _save(page, key)
        if number == 0:
            expect(page.locator("article.call[data-node='reply']")).to_contain_text(japanese)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "review-page.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
        with page.expect_navigation():
            page.keyboard.press("n")
        assert page.locator("section.item").get_attribute("data-trace") != trace_id
    finished = datetime.now(UTC)

    assert len(set(reviewed)) == 5
    labels = _query(seeded.path, "SELECT * FROM labels WHERE reviewer = ? ORDER BY created_at", [REVIEWER])
    assert [(r["trace_id"], r["node"], r["passed"], r["comment"]) for r in labels] == [
        (t, node, key == "p", comment or None) for t, (key, comment, node, _) in zip(reviewed, plan, strict=True)]
    assert all(r["call_id"].startswith(r["trace_id"] + "/") for r in labels)
    assert all(started <= r["created_at"] <= finished for r in labels)
    judged = {r["trace_id"]: r["validator"] for r in labels}
    assert judged[reviewed[0]] == seeded.judge and judged[reviewed[4]] is None  # classify has no judge
    corrections = _query(seeded.path, "SELECT * FROM corrections ORDER BY created_at")
    assert [(r["trace_id"], r["node"], r["reviewer"], r["outputs"]) for r in corrections] == [
        (reviewed[0], "reply", REVIEWER, {"reply": plan[0][3]["reply"]}),
        (reviewed[2], "classify", REVIEWER, {"category": "account"}),
    ]
    assert all(started <= r["created_at"] <= finished for r in corrections)
    # Only what the reviewer did was written: the seeded labels are untouched.
    assert len(_query(seeded.path, "SELECT * FROM labels WHERE reviewer <> ?", [REVIEWER])) == 5


def test_the_page_shows_the_whole_trace_with_japanese_intact(browser, served):
    server, _ = served
    page = browser.new_page(locale="ja-JP")
    page.goto(f"{server.url}/item/t01?status=all")
    text = page.locator("section.item").inner_text()
    for expected in ("注文した商品がまだ届きません", "ご不便をおかけして申し訳ありません。明日お届けします。",
                     "丁寧さが足りません", "classify", "reply", "label_match", "judge:"):
        assert expected in text
    cards = page.locator("article.call").evaluate_all("cards => cards.map(c => c.dataset.node)")
    assert cards == ["classify", "reply"]
    assert "first-failure" in (page.locator("article.call[data-node='reply']").get_attribute("class") or "")


def test_filters_narrow_the_queue(browser, served):
    server, _ = served
    page = browser.new_page()
    page.goto(f"{server.url}/?status=all&until=2026-11-19")
    assert "Nothing to review" in page.locator("body").inner_text()
    page.goto(f"{server.url}/?status=all&pipeline=triage&node=reply&since=2026-11-20")
    assert page.locator("#queue a").count() == 10


def _post(server, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("POST", "/api/review", body=body, headers={"Host": f"127.0.0.1:{port}", **headers})
    response = conn.getresponse()
    return response.status, json.loads(response.read().decode("utf-8"))


def test_bad_reviews_and_foreign_writes_are_refused_and_nothing_is_written(served):
    server, seeded = served
    ok = {"Content-Type": "application/json"}
    review = {"trace_id": "t02", "call_id": "t02/1", "reviewer": "x", "passed": True}
    assert _post(server, b"{not json", ok)[0] == 400
    status, answer = _post(server, json.dumps({**review, "passed": "yes"}).encode(), ok)
    assert status == 400 and "'passed'" in answer["error"]
    status, answer = _post(server, json.dumps({**review, "call_id": "t03/1"}).encode(), ok)
    assert status == 400 and "not part of trace" in answer["error"]
    status, answer = _post(server, json.dumps(review).encode(), {**ok, "Origin": "http://evil.example"})
    assert status == 403
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", "/", headers={"Host": f"rebound.example:{port}"})
    assert conn.getresponse().status == 421
    assert _query(seeded.path, "SELECT count(*) AS n FROM labels")[0]["n"] == 5  # only the seeded ones


_HOLDER = """
import sys
from experiments.store import Store
with Store.open(sys.argv[1]):
    print("holding", flush=True)
    sys.stdin.readline()
"""


def test_a_busy_store_is_reported_and_the_review_saves_once_it_is_free(served, monkeypatch):
    server, seeded = served
    monkeypatch.setenv("PIPEC_STORE_WAIT", "0.2")
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(seeded.path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout.readline().strip() == "holding"
        review = json.dumps({"trace_id": "t02", "call_id": "t02/1", "reviewer": "x", "passed": True}).encode()
        status, answer = _post(server, review, {"Content-Type": "application/json"})
        assert status == 503 and "busy" in answer["error"]
    finally:
        holder.communicate("\n", timeout=60)
    status, answer = _post(server, review, {"Content-Type": "application/json"})
    assert status == 200 and answer["label_id"]


def test_a_correction_made_in_the_browser_is_a_demo_for_the_next_pipec_run(browser, tmp_path, monkeypatch):
    from click.testing import CliRunner
    from playwright.sync_api import expect

    from experiments import recording
    from experiments.cli import cli
    from tests.fakes import fake_lm, triage_respond

    lm, _ = fake_lm(triage_respond)
    real = recording.make_lm
    monkeypatch.setattr(recording, "make_lm", lambda spec=None, **kw: lm if spec == "scripted" else real(spec, **kw))
    path = tmp_path / "store.duckdb"
    tricky = "My card was charged but the parcel never came (order 17)"  # the scripted LM says billing
    messages = [tricky, "注文18の荷物がまだ届きません", "I cannot log in to my account number 19"]
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"message": m}, ensure_ascii=False) + "\n" for m in messages), "utf-8")

    def run(path_in):
        result = CliRunner().invoke(cli, ["run", "triage", "--input", str(path_in), "--store", str(path), "--lm",
                                          "scripted", "--live-demos", "--json"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    first = run(inputs)
    assert first[0]["outputs"]["category"] == "billing"
    server = make_server(lambda read_only: Store.open(path, read_only=read_only), port=0, reviewer=REVIEWER,
                         reviewer_fixed=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = browser.new_page()
        page.goto(f"{server.url}/item/{first[0]['trace_id']}")
        card = page.locator("article.call[data-node='classify']")
        card.locator("h3").click()
        card.locator("summary").click()
        card.locator("textarea.correction").fill("shipping")
        page.locator("#comment").fill("荷物が届いていないので shipping です")
        _save(page, "f")
        expect(card).to_contain_text("corrected")
    finally:
        server.shutdown()
        server.server_close()
    near = tmp_path / "next.jsonl"
    near.write_text(json.dumps({"message": "My card was charged but the parcel never came (order 18)!"}) + "\n",
                    "utf-8")
    (record,) = run(near)
    demos = record["calls"][0]["demos"]
    assert demos and demos[-1] == {"message": tricky, "category": "shipping"}  # the nearest: the correction


def test_a_graded_rubric_takes_a_1_to_5_score_and_j_k_move_between_steps(browser, served):
    from playwright.sync_api import expect

    server, seeded = served
    with Store.open(seeded.path) as store:  # a judge in score mode graded t02's reply
        store.add_verdicts([{"trace_id": "t02", "call_id": "t02/1", "node": "reply", "validator": seeded.judge,
                             "source": "judge", "score": 0.75, "passed": True,
                             "details": {"judge_score": 0.75, "judge_comment": "丁寧です"}}])
    page = browser.new_page()
    page.goto(f"{server.url}/item/t02")
    scores = page.locator("#scores")
    expect(page.locator("#focus-name")).to_have_text("reply")
    expect(scores).to_be_visible()
    page.keyboard.press("k")
    expect(page.locator("#focus-name")).to_have_text("classify")
    expect(scores).to_be_hidden()  # the classifier has no graded rubric
    page.keyboard.press("j")
    expect(page.locator("#focus-name")).to_have_text("reply")
    _save(page, "4")
    (label,) = _query(seeded.path, "SELECT * FROM labels WHERE trace_id = 't02'")
    assert (label["call_id"], label["score"], label["passed"], label["validator"]) == ("t02/1", 4, True,
                                                                                      seeded.judge)


def test_markup_in_the_data_is_shown_as_text_never_run(browser, served):
    from tests.experiments.review_seed import _trace

    server, seeded = served
    hostile = "<script>window.pwned = 1</script><img src=x onerror=\"window.pwned = 2\"> 'quote' & 注文"
    with Store.open(seeded.path) as store:
        store.append_traces([_trace(20, hostile, "billing", f"</textarea><b>{hostile}</b>")])
    page = browser.new_page()
    dialogs = []
    page.on("dialog", lambda d: dialogs.append(d))
    page.goto(f"{server.url}/item/t20?status=all")
    assert page.evaluate("window.pwned") is None and not dialogs
    assert hostile in page.locator("section.item").inner_text()
    assert page.locator("textarea.correction").nth(1).input_value() == f"</textarea><b>{hostile}</b>"
