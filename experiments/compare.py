"""Comparing two tracked runs node by node: what changed in each node's prompt, which examples
got better or worse, and whether the score difference is more than noise.

Both runs are read back from MLflow: the program artifact (``program/*.json``: each node's
instructions and demos) and the per-example results (``evaluation/<stage>.jsonl``: inputs,
outputs, score and each node's verdict). Examples are matched by their inputs, not their
position, so two runs over differently ordered or partly different sets still pair up; examples
only one run has are listed apart. The score deltas come with a seeded paired bootstrap 95%
interval (experiments.stats). Win/loss is seen from run B: a *loss* is an example B scores lower
than A (a regression), listed first.
"""

from __future__ import annotations

import difflib
import html
import json
import tempfile
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

from experiments.stats import LEVEL, paired_delta
from programs.errors import ConfigError

__all__ = ["compare_html", "compare_runs", "log_compare_html"]

_STAGES = ("compiled", "evaluate")  # which results a run's comparison reads, in order of preference
_EPSILON = 1e-9


def _client() -> Any:
    from mlflow.tracking import MlflowClient

    from experiments.liveness import check_tracking_uri

    return MlflowClient(check_tracking_uri())  # a mistyped URI is one line, not minutes of MLflow's retries


def _get_run(client: Any, run_id: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        from experiments.tracking import tracking_uri

        raise ConfigError(f"no MLflow run {run_id!r} in {tracking_uri()}; see the run ids with "
                          "`pipec runs list`") from exc


def _download_text(client: Any, run_id: str, path: str) -> str | None:
    import mlflow

    names = {item.path for item in client.list_artifacts(run_id, path.rpartition("/")[0] or None)}
    if path not in names:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp)
        return Path(local).read_text(encoding="utf-8")


def _program_state(client: Any, run_id: str) -> dict[str, Any]:
    files = [item.path for item in client.list_artifacts(run_id, "program") if item.path.endswith(".json")]
    if not files:
        return {}
    text = _download_text(client, run_id, sorted(files)[0])
    return json.loads(text) if text else {}


def _results(client: Any, run_id: str, stage: str | None) -> tuple[str, list[dict[str, Any]]]:
    stages = (stage,) if stage else _STAGES
    for name in stages:
        text = _download_text(client, run_id, f"evaluation/{name}.jsonl")
        if text is not None:
            return name, [json.loads(line) for line in text.splitlines() if line.strip()]
    wanted = " or ".join(f"evaluation/{s}.jsonl" for s in stages)
    raise ConfigError(f"run {run_id} has no per-example results ({wanted}); compare runs of `pipec compile` "
                      "or `pipec evaluate`" + ("" if stage else ", or pass --stage"))


def _key(inputs: Any) -> str:
    return json.dumps(inputs, sort_keys=True, ensure_ascii=False, default=str)


def _counts(row: dict[str, Any]) -> bool:
    """False when the example's score does not count (its LM failed)."""
    return row.get("error_kind") != "lm" and not row.get("lm_error")


def _example_score(row: dict[str, Any]) -> float | None:
    return float(row["score"]) if _counts(row) and row.get("score") is not None else None


def _node_score(row: dict[str, Any], node: str) -> float | None:
    verdict = (row.get("nodes") or {}).get(node)
    if not verdict or not _counts(row) or verdict.get("counted", True) is False or verdict.get("score") is None:
        return None
    return float(verdict["score"])


def _outcome(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "not comparable"
    return "win" if b > a + _EPSILON else "loss" if b < a - _EPSILON else "tie"


def _pair(rows_a: list[dict], rows_b: list[dict]) -> tuple[list[tuple[dict, dict]], list[dict], list[dict]]:
    """Pairs the examples by input (repeated inputs pair in order); returns pairs and the leftovers."""
    queues: dict[str, deque] = defaultdict(deque)
    for row in rows_b:
        queues[_key(row.get("inputs"))].append(row)
    pairs, only_a = [], []
    for row in rows_a:
        queue = queues.get(_key(row.get("inputs")))
        if queue:
            pairs.append((row, queue.popleft()))
        else:
            only_a.append(row)
    only_b = [row for queue in queues.values() for row in queue]
    return pairs, only_a, only_b


def _node_states(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: value for name, value in state.items()
            if isinstance(value, dict) and isinstance(value.get("signature"), dict)}


def _demo_key(demo: Any) -> str:
    return _key({k: v for k, v in demo.items() if k != "augmented"} if isinstance(demo, dict) else demo)


def _node_diff(name: str, a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any]:
    instr_a = ((a or {}).get("signature") or {}).get("instructions") or ""
    instr_b = ((b or {}).get("signature") or {}).get("instructions") or ""
    diff = list(difflib.unified_diff(instr_a.splitlines(), instr_b.splitlines(), "A", "B", lineterm=""))
    demos_a = {_demo_key(d): d for d in (a or {}).get("demos") or []}
    demos_b = {_demo_key(d): d for d in (b or {}).get("demos") or []}
    return {
        "instructions": {"a": instr_a, "b": instr_b, "changed": instr_a != instr_b, "diff": diff},
        "demos": {"a": len(demos_a), "b": len(demos_b), "kept": len(demos_a.keys() & demos_b.keys()),
                  "added": [demos_b[k] for k in demos_b if k not in demos_a],
                  "removed": [demos_a[k] for k in demos_a if k not in demos_b]},
    }


def _run_info(run: Any, stage: str) -> dict[str, Any]:
    params, metrics = run.data.params, run.data.metrics
    return {"run_id": run.info.run_id, "run_name": run.info.run_name, "kind": run.data.tags.get("pipec.kind"),
            "pipeline": params.get("pipeline"), "optimizer": params.get("optimizer"),
            "lm": params.get("lm.model"), "stage": stage, "score": metrics.get(f"{stage}.score")}


def compare_runs(run_a: str, run_b: str, *, stage: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Compares run B against run A.

    Args:
        run_a: The reference run's id.
        run_b: The run being judged against it.
        stage: Which per-example results to read (``compiled``, ``baseline``, ``evaluate``).
            Default: ``compiled`` when the run has it, else ``evaluate``.
        seed: The bootstrap's seed.

    Returns:
        ``runs`` (both runs' ids, names, settings), ``overall`` and ``nodes`` (paired means,
        delta and its interval), ``prompts`` (per node the instruction diff and the demos added
        and removed), ``counts`` (wins, losses, ties), ``examples`` (losses first, then wins,
        then ties: inputs, both outputs, scores and each node's verdict on both sides) and the
        examples only one run has.

    Raises:
        ConfigError: A run that does not exist or has no per-example results.
    """
    client = _client()
    found_a, found_b = _get_run(client, run_a), _get_run(client, run_b)
    stage_a, rows_a = _results(client, run_a, stage)
    stage_b, rows_b = _results(client, run_b, stage)
    pairs, only_a, only_b = _pair(rows_a, rows_b)
    nodes = sorted({n for row in rows_a + rows_b for n in row.get("nodes") or {}},
                   key=lambda n: next((i for i, r in enumerate(rows_a) if n in (r.get("nodes") or {})), 0))

    examples = []
    for row_a, row_b in pairs:
        a, b = _example_score(row_a), _example_score(row_b)
        node_rows = {}
        for node in nodes:
            va, vb = (row_a.get("nodes") or {}).get(node) or {}, (row_b.get("nodes") or {}).get(node) or {}
            sa, sb = _node_score(row_a, node), _node_score(row_b, node)
            node_rows[node] = {"outcome": _outcome(sa, sb), "a": {"score": sa, "passed": va.get("passed"),
                                                                  "feedback": va.get("feedback", "")},
                               "b": {"score": sb, "passed": vb.get("passed"), "feedback": vb.get("feedback", "")}}
        examples.append({"outcome": _outcome(a, b), "delta": None if a is None or b is None else b - a,
                         "inputs": row_a.get("inputs"), "example_a": row_a.get("example"),
                         "example_b": row_b.get("example"),
                         "a": {"score": a, "outputs": row_a.get("outputs"), "error": row_a.get("error")},
                         "b": {"score": b, "outputs": row_b.get("outputs"), "error": row_b.get("error")},
                         "nodes": node_rows})
    order = {"loss": 0, "win": 1, "tie": 2, "not comparable": 3}
    examples.sort(key=lambda e: (order[e["outcome"]], -abs(e["delta"] or 0.0)))

    overall = paired_delta([_example_score(a) for a, _ in pairs], [_example_score(b) for _, b in pairs], seed=seed)
    per_node = {n: paired_delta([_node_score(a, n) for a, _ in pairs], [_node_score(b, n) for _, b in pairs],
                                seed=seed) for n in nodes}
    for node in nodes:
        outcomes = [e["nodes"][node]["outcome"] for e in examples]
        per_node[node].update({k: outcomes.count(k) for k in ("win", "loss", "tie")})
    states_a, states_b = _node_states(_program_state(client, run_a)), _node_states(_program_state(client, run_b))
    prompts = {n: _node_diff(n, states_a.get(n), states_b.get(n)) for n in sorted(states_a.keys() | states_b.keys())}
    outcomes = [e["outcome"] for e in examples]
    return {
        "runs": {"a": _run_info(found_a, stage_a), "b": _run_info(found_b, stage_b)},
        "level": LEVEL, "seed": seed,
        "overall": overall, "nodes": per_node, "prompts": prompts,
        "counts": {"win": outcomes.count("win"), "loss": outcomes.count("loss"), "tie": outcomes.count("tie"),
                   "not_comparable": outcomes.count("not comparable"), "paired": len(pairs),
                   "only_a": len(only_a), "only_b": len(only_b)},
        "examples": examples,
        "only_a": [{"example": r.get("example"), "inputs": r.get("inputs")} for r in only_a],
        "only_b": [{"example": r.get("example"), "inputs": r.get("inputs")} for r in only_b],
    }


# --- HTML -------------------------------------------------------------------------------------

_CSS = """
body{font-family:"Noto Sans CJK JP","Noto Sans JP",system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.3em .5em;
vertical-align:top;text-align:left}th{background:#f3f3f3}.num{text-align:right;font-variant-numeric:tabular-nums}
.loss{background:#fde8e8}.win{background:#e6f6e6}.tie{background:#fafafa}pre{white-space:pre-wrap;margin:0}
.add{color:#176117;background:#e6f6e6}.del{color:#8a1414;background:#fde8e8}.muted{color:#777}
"""


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:+.3f}" if isinstance(value, float) and value < 0 else (
        f"{value:.3f}" if isinstance(value, float) else str(value))


def _e(value: Any) -> str:
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False, indent=1, default=str)
    return html.escape("" if value is None else str(value))


def _delta_row(label: str, d: dict[str, Any]) -> str:
    interval = "–" if d["low"] is None else f"[{d['low']:+.3f}, {d['high']:+.3f}]"
    delta = "–" if d["delta"] is None else f"{d['delta']:+.3f}"
    extra = "".join(f"<td class=num>{d.get(k, '')}</td>" for k in ("win", "loss", "tie"))
    return (f"<tr><td>{_e(label)}</td><td class=num>{_fmt(d['a'])}</td><td class=num>{_fmt(d['b'])}</td>"
            f"<td class=num>{delta}</td><td class=num>{interval}</td><td class=num>{d['n']}</td>{extra}</tr>")


def compare_html(result: dict[str, Any]) -> str:
    """The comparison as one self-contained, escaped UTF-8 HTML page."""
    a, b, counts = result["runs"]["a"], result["runs"]["b"], result["counts"]
    level = f"{result['level']:.0%}"
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>pipec compare {_e(a['run_id'][:8])} → {_e(b['run_id'][:8])}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>{_e(a['run_name'])} (A) → {_e(b['run_name'])} (B)</h1>",
             "<table><tr><th></th><th>run</th><th>pipeline</th><th>optimizer</th><th>LM</th><th>results</th></tr>"]
    for side, run in (("A", a), ("B", b)):
        parts.append(f"<tr><th>{side}</th><td><code>{_e(run['run_id'])}</code></td><td>{_e(run['pipeline'])}</td>"
                     f"<td>{_e(run['optimizer'])}</td><td>{_e(run['lm'])}</td><td>{_e(run['stage'])}</td></tr>")
    parts.append("</table>")
    parts.append(f"<p>{counts['paired']} examples paired by input: <b>{counts['loss']} regressions</b>, "
                 f"{counts['win']} improvements, {counts['tie']} ties"
                 + (f", {counts['not_comparable']} not comparable" if counts["not_comparable"] else "")
                 + (f"; only in A: {counts['only_a']}, only in B: {counts['only_b']}"
                    if counts["only_a"] or counts["only_b"] else "") + ".</p>")
    parts.append(f"<h2>Scores (paired bootstrap {level} interval of B − A, seed {result['seed']})</h2>"
                 "<table><tr><th></th><th>A</th><th>B</th><th>Δ</th><th>interval</th><th>n</th>"
                 "<th>wins</th><th>losses</th><th>ties</th></tr>")
    parts.append(_delta_row("pipeline", {**result["overall"], "win": counts["win"], "loss": counts["loss"],
                                         "tie": counts["tie"]}))
    parts += [_delta_row(f"node {n}", d) for n, d in result["nodes"].items()]
    parts.append("</table><h2>Prompts</h2>")
    for node, diff in result["prompts"].items():
        instructions, demos = diff["instructions"], diff["demos"]
        parts.append(f"<h3>{_e(node)}</h3>")
        if instructions["changed"]:
            lines = []
            for line in instructions["diff"]:
                cls = "add" if line.startswith("+") and not line.startswith("+++") else (
                    "del" if line.startswith("-") and not line.startswith("---") else "")
                lines.append(f"<span class='{cls}'>{_e(line)}</span>")
            parts.append("<p>Instructions changed:</p><pre>" + "\n".join(lines) + "</pre>")
        else:
            parts.append(f"<p>Instructions unchanged:</p><pre class=muted>{_e(instructions['a'])}</pre>")
        parts.append(f"<p>Demos: {demos['a']} in A, {demos['b']} in B, {demos['kept']} kept, "
                     f"{len(demos['added'])} added, {len(demos['removed'])} removed.</p>")
        for label, items in (("added", demos["added"]), ("removed", demos["removed"])):
            if items:
                cls = "add" if label == "added" else "del"
                parts.append(f"<details><summary>{label} ({len(items)})</summary>"
                             + "".join(f"<pre class='{cls}'>{_e(d)}</pre>" for d in items) + "</details>")
    parts.append("<h2>Examples (regressions first)</h2><table><tr><th>outcome</th><th>inputs</th>"
                 "<th>A</th><th>B</th><th>verdicts (A | B)</th></tr>")
    for example in result["examples"]:
        verdicts = "".join(
            f"<div><b>{_e(n)}</b> {_fmt(v['a']['score'])} → {_fmt(v['b']['score'])}"
            + (f"<br><span class=del>A: {_e(v['a']['feedback'])}</span>" if v["a"]["feedback"] else "")
            + (f"<br><span class=del>B: {_e(v['b']['feedback'])}</span>" if v["b"]["feedback"] else "") + "</div>"
            for n, v in example["nodes"].items())
        side = lambda s: (f"<div class=num>{_fmt(s['score'])}</div><pre>{_e(s['outputs'])}</pre>"  # noqa: E731
                          + (f"<pre class=del>{_e(s['error'])}</pre>" if s["error"] else ""))
        cls = example["outcome"] if example["outcome"] in ("win", "loss", "tie") else ""
        parts.append(f"<tr class='{cls}'><td>{_e(example['outcome'])}</td><td><pre>{_e(example['inputs'])}</pre></td>"
                     f"<td>{side(example['a'])}</td><td>{side(example['b'])}</td><td>{verdicts}</td></tr>")
    parts.append("</table>")
    for side in ("only_a", "only_b"):
        if result[side]:
            parts.append(f"<h2>Only in {side[-1].upper()}</h2><ul>"
                         + "".join(f"<li><pre>{_e(r['inputs'])}</pre></li>" for r in result[side]) + "</ul>")
    parts.append("</body></html>\n")
    return "".join(parts)


def log_compare_html(result: dict[str, Any], page: str) -> str:
    """Logs the HTML page on run B, where the MLflow UI shows it; returns its artifact path."""
    path = f"compare/vs-{result['runs']['a']['run_id']}.html"
    _client().log_text(result["runs"]["b"]["run_id"], page, path)
    return path
