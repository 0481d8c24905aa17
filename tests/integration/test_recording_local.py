"""pipec run on the real embedded model: calls recorded, a correction comes back as a demo."""

import json
import os
import subprocess
import sys

import pytest

from experiments.store import Store

pytestmark = pytest.mark.integration


def pipec_run(tmp_path, rows, *args):
    done = subprocess.run(
        [sys.executable, "-m", "experiments", "run", "triage", "--lm", "local", "--store", "store.duckdb", *args],
        input="".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), capture_output=True, text=True,
        timeout=600, cwd=tmp_path, env={**os.environ, "DSPY_CACHEDIR": str(tmp_path / "dspy-cache")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_recorded_calls_and_a_correction_as_the_next_calls_demo(tmp_path):
    first = pipec_run(tmp_path, [{"message": "My card was charged but the parcel never came."},
                                 {"message": "荷物がまだ届きません。"}, {"message": ""}], "--guard", "not_empty")
    assert [r.get("error_kind") for r in first] == [None, None, "rejected"]
    assert all(r["category"] in ("billing", "shipping", "account", "technical", "refund") for r in first[:2])
    with Store.open(tmp_path / "store.duckdb") as store:
        assert store.query("SELECT count(*) AS n FROM node_calls")[0]["n"] == 4
        assert store.query("SELECT count(*) AS n FROM verdicts WHERE source = 'rule'")[0]["n"] == 4
        (trace,) = store.query("SELECT trace_id FROM traces WHERE inputs->>'message' LIKE 'My card%'")
        store.add_correction(trace["trace_id"], {"category": "shipping"}, node="classify", reviewer="test")
    (second,) = pipec_run(tmp_path, [{"message": "My card was charged but my parcel never came!"}],
                          "--live-demos", "--json")
    classify = second["calls"][0]
    assert classify["demos"][-1] == {"message": "My card was charged but the parcel never came.",
                                     "category": "shipping"}
    assert second["outputs"]["category"] in ("billing", "shipping", "account", "technical", "refund")
