"""The review page: a small local web server over the store (``pipec review``).

Server-rendered HTML (every value HTML-escaped, UTF-8 throughout) with a little vanilla
JavaScript for the keyboard shortcuts and for saving. No framework: the standard library's
``http.server``.

Each request opens the store, reads or writes, and closes it again, so the page never holds the
store's single-writer lock between requests and ``pipec run`` can write between two reviews. When
another process is writing at that moment, the page answers "the store is busy" and the reviewer
retries; nothing is half-written.

Binds 127.0.0.1 by default. Requests whose ``Host`` is not the address the server was started
on, and writes whose ``Origin`` is another site, are refused (a page elsewhere cannot post reviews
through the reviewer's browser).
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from experiments.review import (
    TIER_NAMES,
    CallView,
    ItemView,
    QueueFilters,
    ReviewInput,
    load_item,
    options,
    queue,
    save_review,
)
from programs.errors import PipecError, StoreBusyError, UserError

__all__ = ["ReviewServer", "make_server"]

logger = logging.getLogger(__name__)

OpenStore = Callable[[bool], contextlib.AbstractContextManager[Any]]
"""``open_store(read_only)`` -> a context manager yielding an open store."""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _show(value: Any) -> str:
    """A value as the reviewer reads it: text as is (Japanese intact), structures as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, indent=2, default=str)


def _time(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value.utcoffset() is not None else value.isoformat(" ")
    return "" if value is None else str(value)


def _fields(values: Any) -> str:
    if not isinstance(values, Mapping):
        return f"<pre>{_e(_show(values))}</pre>"
    rows = "".join(f"<dt>{_e(k)}</dt><dd><pre>{_e(_show(v))}</pre></dd>" for k, v in values.items())
    return f"<dl>{rows}</dl>" if rows else "<p class=muted>(none)</p>"


_CSS = """
*{box-sizing:border-box} body{font-family:system-ui,"Noto Sans CJK JP","Noto Sans JP",sans-serif;margin:0;
color:#1d232a;background:#f5f6f8;font-size:14px} header{background:#1d2b3a;color:#fff;padding:8px 16px;display:flex;
gap:16px;align-items:center;flex-wrap:wrap} header h1{font-size:16px;margin:0} header .keys{opacity:.85}
kbd{background:#fff;color:#1d2b3a;border-radius:3px;padding:0 4px;font-size:12px}
form.filters{display:flex;gap:8px;padding:8px 16px;background:#e8ebef;flex-wrap:wrap;align-items:end}
form.filters label{display:flex;flex-direction:column;font-size:12px} main{display:flex;gap:12px;padding:12px 16px}
aside{width:300px;flex:none;max-height:calc(100vh - 130px);overflow:auto} aside ol{list-style:none;margin:0;padding:0}
aside li a{display:block;padding:6px 8px;margin-bottom:4px;background:#fff;border-radius:4px;color:inherit;
text-decoration:none;border-left:4px solid #9aa5b1} aside li a.current{outline:2px solid #2f6fde}
.t1{border-left-color:#d33 !important} .t2{border-left-color:#e0a000 !important} .t3{border-left-color:#3a3 !important}
.badge{font-size:11px;padding:1px 5px;border-radius:8px;background:#e8ebef;margin-right:4px;white-space:nowrap}
.badge.bad{background:#fde2e2;color:#a11} .badge.good{background:#dff5df;color:#161}
section.item{flex:1;min-width:0;padding-bottom:140px}
.card{background:#fff;border-radius:6px;padding:10px 14px;margin-bottom:10px;
border:1px solid #d9dee4} article.call{cursor:pointer} article.call.focus{border:2px solid #2f6fde}
article.call.first-failure h3::after{content:" ← first failing step";color:#a11;font-size:12px}
.cols{display:flex;gap:16px} .cols>div{flex:1;min-width:0} pre{white-space:pre-wrap;word-break:break-word;margin:0;
font-family:ui-monospace,"Noto Sans Mono CJK JP",monospace;font-size:13px} dl{margin:0} dt{font-weight:600;
font-size:12px;color:#556} dd{margin:0 0 6px 0} table{border-collapse:collapse;width:100%;font-size:13px}
td,th{border-top:1px solid #e3e6ea;padding:3px 6px;text-align:left;vertical-align:top}
h3{margin:0 0 6px 0;font-size:15px}
.muted{color:#778} textarea{width:100%;font:inherit} .review{position:sticky;bottom:0;background:#fff;
border:2px solid #2f6fde} button{font:inherit;padding:4px 12px;margin-right:6px;cursor:pointer}
#status{margin-top:6px;min-height:1.2em} #status.error{color:#a11} #status.ok{color:#161}
.label-row,.correction-row{font-size:13px;margin-top:4px}
"""

_JS = r"""
(() => {
  const item = document.querySelector("section.item");
  if (!item) return;
  const calls = [...document.querySelectorAll("article.call")];
  const status = document.getElementById("status");
  const reviewer = document.getElementById("reviewer");
  const comment = document.getElementById("comment");
  const scores = document.getElementById("scores");
  const saved = localStorage.getItem("pipec-reviewer");
  if (saved && !reviewer.dataset.fixed) reviewer.value = saved;
  reviewer.addEventListener("change", () => localStorage.setItem("pipec-reviewer", reviewer.value.trim()));
  let focus = item.dataset.focus;
  function setFocus(id) {
    const card = calls.find(c => c.dataset.call === id);
    if (!card) return;
    focus = id;
    calls.forEach(c => c.classList.toggle("focus", c === card));
    document.getElementById("focus-name").textContent = card.dataset.node;
    scores.hidden = card.dataset.graded !== "1";
  }
  calls.forEach(c => c.addEventListener("click", e => {
    if (!["TEXTAREA", "SUMMARY", "BUTTON"].includes(e.target.tagName)) setFocus(c.dataset.call);
  }));
  if (focus) setFocus(focus);
  const flash = sessionStorage.getItem("pipec-flash");
  if (flash) { sessionStorage.removeItem("pipec-flash"); status.textContent = flash; status.className = "ok"; }
  function say(text, ok) { status.textContent = text; status.className = ok ? "ok" : "error"; }
  async function submit(passed, score) {
    const name = reviewer.value.trim();
    if (!name) { say("Write your name in the reviewer box first.", false); reviewer.focus(); return; }
    const corrections = {};
    document.querySelectorAll("textarea.correction").forEach(t => {
      if (t.value !== t.dataset.original) corrections[t.dataset.call] = t.value;
    });
    const card = calls.find(c => c.dataset.call === focus);
    const body = {trace_id: item.dataset.trace, call_id: focus || null, reviewer: name, passed: passed,
                  score: score, comment: comment.value, validator: card ? (card.dataset.validator || null) : null,
                  corrections: corrections};
    say("Saving…", true);
    try {
      const response = await fetch("/api/review", {method: "POST", body: JSON.stringify(body),
        headers: {"Content-Type": "application/json; charset=utf-8"}});
      const answer = await response.json();
      if (!response.ok) { say(answer.error || response.statusText, false); return; }
      const what = passed === null ? "corrections" : (passed ? "pass" : "fail") + (score ? " (" + score + "/5)" : "");
      const n = answer.correction_ids.length;
      sessionStorage.setItem("pipec-flash", "Saved: " + what + (card ? " on " + card.dataset.node : "") +
        (n ? ", " + n + " correction" + (n > 1 ? "s" : "") : "") + ". Press n for the next item.");
      location.reload();
    } catch (err) { say("Could not save: " + err, false); }
  }
  function next() { location.href = item.dataset.next; }
  document.getElementById("pass").addEventListener("click", () => submit(true, null));
  document.getElementById("fail").addEventListener("click", () => submit(false, null));
  document.getElementById("save-corrections").addEventListener("click", () => submit(null, null));
  document.getElementById("next").addEventListener("click", next);
  scores.querySelectorAll("button").forEach(b => b.addEventListener("click", () => submit(null, +b.dataset.score)));
  document.addEventListener("keydown", e => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (["TEXTAREA", "INPUT", "SELECT"].includes(e.target.tagName)) {
      if (e.key === "Escape") e.target.blur();
      return;
    }
    const at = calls.findIndex(c => c.dataset.call === focus);
    if (e.key === "p") submit(true, null);
    else if (e.key === "f") submit(false, null);
    else if (e.key === "n") next();
    else if (e.key === "j" && at < calls.length - 1) setFocus(calls[at + 1].dataset.call);
    else if (e.key === "k" && at > 0) setFocus(calls[at - 1].dataset.call);
    else if ("12345".includes(e.key) && !scores.hidden) submit(null, +e.key);
    else return;
    e.preventDefault();
  });
})();
"""


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
            f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{_CSS}</style></head>"
            f"<body>{body}<script>{_JS}</script></body></html>")


def _header(reviewer: str, fixed: bool, store: str) -> str:
    fixed_attr = " data-fixed=1" if fixed else ""
    return (f"<header><h1>pipec review</h1><span class=muted title='{_e(store)}'>store: {_e(store)}</span>"
            f"<label>reviewer <input id=reviewer value='{_e(reviewer)}'{fixed_attr} size=14></label>"
            "<span class=keys>keys: <kbd>p</kbd> pass · <kbd>f</kbd> fail · <kbd>n</kbd> next · "
            "<kbd>j</kbd>/<kbd>k</kbd> next/previous step · <kbd>1</kbd>-<kbd>5</kbd> score (graded rubrics) · "
            "<kbd>Esc</kbd> leave a text box</span></header>")


def _filters_form(filters: QueueFilters, choices: Mapping[str, list[str]]) -> str:
    def select(name: str, current: str) -> str:
        values = list(choices.get(name, []))
        if current and current not in values:
            values.append(current)
        opts = "".join(f"<option value='{_e(v)}'{' selected' if v == current else ''}>{_e(v)}</option>" for v in values)
        return f"<label>{name}<select name={name}><option value=''>(all)</option>{opts}</select></label>"

    status = "".join(f"<option value={v}{' selected' if v == filters.status else ''}>{label}</option>"
                     for v, label in (("open", "to review"), ("all", "all, reviewed too")))
    return (f"<form class=filters method=get action='/'>{select('pipeline', filters.pipeline)}"
            f"{select('node', filters.node)}{select('validator', filters.validator)}"
            f"<label>since<input type=date name=since value='{_e(filters.since or '')}'></label>"
            f"<label>until<input type=date name=until value='{_e(filters.until or '')}'></label>"
            f"<label>status<select name=status>{status}</select></label><button>Filter</button></form>")


def _suffix(filters: QueueFilters) -> str:
    query = urlencode(filters.as_query())
    return f"?{query}" if query else ""


def _queue_list(items: list[Any], current: str | None, filters: QueueFilters) -> str:
    if not items:
        return "<aside><p class=muted>Nothing to review under these filters.</p></aside>"
    rows = []
    for it in items:
        cls = f"t{it.tier}" + (" current" if it.trace_id == current else "")
        rows.append(f"<li><a class='{cls}' href='/item/{quote(it.trace_id)}{_suffix(filters)}' "
                    f"data-trace='{_e(it.trace_id)}'><span class='badge{' bad' if it.tier == 1 else ''}'>"
                    f"{_e(it.reason)}</span><b>{_e(it.pipeline)}</b> <span class=muted>{_e(_time(it.created_at))}"
                    f"</span><br>{_e(it.preview)}</a></li>")
    return f"<aside><p class=muted>{len(items)} in the queue</p><ol id=queue>{''.join(rows)}</ol></aside>"


def _verdict_rows(verdicts: list[dict[str, Any]]) -> str:
    if not verdicts:
        return "<p class=muted>No verdicts.</p>"
    rows = []
    for v in verdicts:
        mark = ("<span class='badge good'>pass</span>" if v["passed"] else
                "<span class='badge bad'>fail</span>") if v.get("counted") is not False else \
            "<span class=badge>not graded</span>"
        score = "" if v["score"] is None else f"{v['score']:.2f}"
        rows.append(f"<tr><td>{_e(v['source'])}</td><td>{_e(v['validator'])}</td><td>{score}</td><td>{mark}</td>"
                    f"<td>{_e(v['feedback'])}</td></tr>")
    return ("<table class=verdicts><tr><th>source</th><th>validator</th><th>score</th><th></th><th>feedback</th></tr>"
            f"{''.join(rows)}</table>")


def _human_rows(call: CallView) -> str:
    parts = []
    for label in call.labels:
        mark = "pass" if label["passed"] else "fail"
        score = f" {label['score']}/5" if label["score"] is not None else ""
        parts.append(f"<div class=label-row><span class='badge {'good' if label['passed'] else 'bad'}'>human "
                     f"{mark}{score}</span>{_e(label['reviewer'])} · {_e(_time(label['created_at']))}"
                     f"{' · ' + _e(label['comment']) if label['comment'] else ''}</div>")
    for corr in call.corrections:
        value = corr["outputs"].get(call.output_field) if isinstance(corr["outputs"], Mapping) else corr["outputs"]
        parts.append(f"<div class=correction-row><span class=badge>corrected</span>{_e(corr['reviewer'])} · "
                     f"{_e(_time(corr['created_at']))}<pre>{_e(_show(value))}</pre></div>")
    return "".join(parts)


def _call_card(call: CallView, first_failure: str | None) -> str:
    classes = ["card", "call"] + (["first-failure"] if call.call_id == first_failure else [])
    judge = next((v["validator"] for v in reversed(call.verdicts) if v["source"] == "judge"), "")
    badges = "<span class='badge bad'>judge ≠ human</span>" if call.disagreement else ""
    latest = call.corrections[-1]["outputs"].get(call.output_field) if call.corrections and isinstance(
        call.corrections[-1]["outputs"], Mapping) else None
    original = _show(call.output) if call.output is not None else ""
    start = _show(latest) if latest is not None else original
    error = f"<p class=error><b>error:</b> {_e(call.error)}</p>" if call.error else ""
    return (f"<article class='{' '.join(classes)}' data-call='{_e(call.call_id)}' data-node='{_e(call.node)}' "
            f"data-validator='{_e(judge)}' data-graded='{1 if call.graded else 0}'>"
            f"<h3>{call.position + 1}. {_e(call.node)} <span class=muted>({_e(call.kind)})</span> {badges}</h3>"
            f"<div class=cols><div><b>inputs</b>{_fields(call.inputs)}</div><div><b>output</b> "
            f"<span class=muted>{_e(call.output_field)}</span><pre class=output>{_e(original)}</pre>{error}</div></div>"
            f"{_verdict_rows(call.verdicts)}{_human_rows(call)}"
            f"<details><summary>Correct this output</summary><textarea class=correction rows=4 "
            f"data-call='{_e(call.call_id)}' data-original='{_e(start)}'>{_e(start)}</textarea></details></article>")


def _item_html(item: ItemView, next_url: str, reason: str) -> str:
    trace = item.trace
    first = item.first_failure
    first_node = next((c.node for c in item.calls if c.call_id == first), None)
    hint = (f"<p>First failing step: <b>{_e(first_node)}</b></p>" if first_node else
            "<p class=muted>No step failed a check.</p>")
    error = f"<p class=error><b>trace error ({_e(trace.get('error_kind'))}):</b> {_e(trace['error'])}</p>" \
        if trace.get("error") else ""
    cards = "".join(_call_card(c, first) for c in item.calls) or "<p class=muted>This trace has no node calls.</p>"
    return (f"<section class=item data-trace='{_e(trace['trace_id'])}' data-focus='{_e(item.focus or '')}' "
            f"data-next='{_e(next_url)}'><div class=card><h2>{_e(trace['pipeline'])} "
            f"<span class=badge>{_e(reason)}</span></h2><p class=muted>trace {_e(trace['trace_id'])} · "
            f"{_e(_time(trace['created_at']))} · program {_e(trace.get('program_version'))}</p>"
            f"<div class=cols><div><b>inputs</b>{_fields(trace['inputs'])}</div><div><b>outputs</b>"
            f"{_fields(trace['outputs'])}</div></div>{error}{hint}{_verdict_rows(item.trace_verdicts)}</div>"
            f"{cards}<div class='card review'>Label for step <b id=focus-name></b> "
            "<span class=muted>(click a step or use j/k to choose another)</span>"
            "<textarea id=comment rows=2 placeholder='Comment: what is wrong, what would be right'></textarea>"
            "<button id=pass>Pass (p)</button><button id=fail>Fail (f)</button>"
            "<span id=scores hidden>score: " + "".join(f"<button data-score={s}>{s}</button>" for s in range(1, 6)) +
            "</span><button id=save-corrections>Save corrections only</button><button id=next>Next (n)</button>"
            "<div id=status role=status></div></div></section>")


class ReviewServer(ThreadingHTTPServer):
    """The review page's HTTP server (``serve_forever`` to run, ``shutdown`` to stop)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], open_store: OpenStore, *, reviewer: str, store_label: str,
                 reviewer_fixed: bool = False, allowed_hosts: tuple[str, ...] = ()) -> None:
        super().__init__(address, _Handler)
        self.open_store, self.reviewer, self.store_label = open_store, reviewer, store_label
        self.reviewer_fixed = reviewer_fixed  # named on the command line: wins over the browser's memory
        self.lock = threading.Lock()  # one store connection at a time within this process
        port = self.server_address[1]
        host = address[0]
        # Bound to loopback, only loopback names may reach it (a DNS-rebinding page cannot); bound
        # elsewhere (--allow-remote), the machine's names are not known here, so any Host is served.
        self.allowed_hosts: set[str] | None = (
            {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]", host, *allowed_hosts)}
            if host in ("127.0.0.1", "localhost", "::1") else None)

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.server_address[1]}"

    @contextlib.contextmanager
    def store(self, read_only: bool) -> Iterator[Any]:
        with self.lock, self.open_store(read_only) as store:
            yield store


class _Handler(BaseHTTPRequestHandler):
    server: ReviewServer
    server_version = "pipec-review"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("review page: " + format, *args)

    def _send(self, status: int, body: str, content_type: str = "text/html; charset=utf-8",
              headers: Mapping[str, str] | None = None) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; style-src 'unsafe-inline'; "
                                                    "script-src 'unsafe-inline'; frame-ancestors 'none'")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: int, payload: Mapping[str, Any]) -> None:
        self._send(status, json.dumps(payload, ensure_ascii=False, default=str), "application/json; charset=utf-8")

    def _redirect(self, location: str) -> None:
        self._send(HTTPStatus.SEE_OTHER, "", headers={"Location": location})

    def _host_ok(self) -> bool:
        allowed = self.server.allowed_hosts
        if allowed is not None and self.headers.get("Host", "") not in allowed:
            self._send(HTTPStatus.MISDIRECTED_REQUEST, "<p>Unknown Host header; open the address pipec review "
                                                       "printed.</p>")
            return False
        return True

    def _busy(self, exc: Exception, as_json: bool) -> None:
        message = f"The store is busy ({exc}); try again in a moment."
        if as_json:
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": message})
        else:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, _page("pipec review", f"<p>{_e(message)}</p>"))

    def do_GET(self) -> None:
        if not self._host_ok():
            return
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query))
        try:
            filters = QueueFilters.from_query(query)
            if url.path == "/healthz":
                self._send(HTTPStatus.OK, "ok", "text/plain; charset=utf-8")
            elif url.path == "/":
                self._index(filters)
            elif url.path == "/next":
                self._next(filters, query.get("after", ""))
            elif url.path.startswith("/item/"):
                from urllib.parse import unquote

                self._item(unquote(url.path[len("/item/"):]), filters)
            else:
                self._send(HTTPStatus.NOT_FOUND, _page("not found", "<p>Not found. <a href='/'>The queue</a></p>"))
        except StoreBusyError as exc:
            self._busy(exc, as_json=False)
        except UserError as exc:
            self._send(HTTPStatus.BAD_REQUEST, _page("pipec review", f"<p>{_e(exc)}</p><p><a href='/'>The queue</a>"))
        except PipecError as exc:
            self._busy(exc, as_json=False)

    def _top(self, filters: QueueFilters, choices: Mapping[str, list[str]]) -> str:
        return _header(self.server.reviewer, self.server.reviewer_fixed, self.server.store_label) + \
            _filters_form(filters, choices)

    def _index(self, filters: QueueFilters) -> None:
        with self.server.store(read_only=True) as store:
            items = queue(store, filters, limit=1)
            if items:
                self._redirect(f"/item/{quote(items[0].trace_id)}{_suffix(filters)}")
                return
            choices = options(store)
        body = (self._top(filters, choices) +
                "<main><p id=empty>Nothing to review under these filters: every trace has a human label and no "
                "judge disagrees. Choose status \"all\" to see reviewed traces.</p></main>")
        self._send(HTTPStatus.OK, _page("pipec review", body))

    def _next(self, filters: QueueFilters, after: str) -> None:
        with self.server.store(read_only=True) as store:
            ids = [it.trace_id for it in queue(store, filters)]
        if after in ids:
            ids = ids[ids.index(after) + 1:] + ids[: ids.index(after)]
        ids = [i for i in ids if i != after]
        self._redirect(f"/item/{quote(ids[0])}{_suffix(filters)}" if ids else f"/{_suffix(filters)}")

    def _item(self, trace_id: str, filters: QueueFilters) -> None:
        with self.server.store(read_only=True) as store:
            item = load_item(store, trace_id)
            items = queue(store, filters)
            choices = options(store)
        if item is None:
            self._send(HTTPStatus.NOT_FOUND, _page("not found", f"<p>No trace {_e(trace_id)} in the store. "
                                                                "<a href='/'>The queue</a></p>"))
            return
        here = next((it for it in items if it.trace_id == trace_id), None)
        reason = here.reason if here else TIER_NAMES[3]
        query = {**filters.as_query(), "after": trace_id}
        body = (self._top(filters, choices) +
                "<main>" + _queue_list(items, trace_id, filters) +
                _item_html(item, f"/next?{urlencode(query)}", reason) + "</main>")
        self._send(HTTPStatus.OK, _page(f"review · {item.trace['pipeline']}", body))

    def do_POST(self) -> None:
        if not self._host_ok():
            return
        origin = self.headers.get("Origin")
        if origin and urlsplit(origin).netloc != self.headers.get("Host", ""):  # same origin only
            self._json(HTTPStatus.FORBIDDEN, {"error": f"writes from {origin} are refused"})
            return
        if urlsplit(self.path).path != "/api/review":
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": "send the review as application/json"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= 1_000_000:
                raise UserError("the review is empty or larger than 1 MB")
            try:
                data = json.loads(self.rfile.read(length).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise UserError(f"the review is not UTF-8 JSON: {exc}") from exc
            if not isinstance(data, Mapping):
                raise UserError("the review must be a JSON object")
            review = ReviewInput.from_json(data)
            with self.server.store(read_only=False) as store:
                saved = save_review(store, review)
        except StoreBusyError as exc:
            self._busy(exc, as_json=True)
            return
        except UserError as exc:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            return
        except PipecError as exc:
            self._busy(exc, as_json=True)
            return
        self._json(HTTPStatus.OK, {"ok": True, **saved})


def make_server(open_store: OpenStore, *, host: str = "127.0.0.1", port: int = 8765, reviewer: str = "",
                reviewer_fixed: bool = False, store_label: str = "") -> ReviewServer:
    """A review server bound to ``host:port`` (port 0: any free port; see ``server.url``).

    Args:
        open_store: ``open_store(read_only)`` -> a context manager yielding an open store; called
            once per request, so the store is held only while a request reads or writes.
        host: The address to bind; the CLI allows only 127.0.0.1 unless told otherwise.
        port: The port.
        reviewer: The default reviewer name shown on the page.
        reviewer_fixed: The name was given explicitly: it wins over the one the browser remembers.
        store_label: What the page says the store is (its path).
    """
    return ReviewServer((host, port), open_store, reviewer=reviewer, store_label=store_label,
                        reviewer_fixed=reviewer_fixed)
