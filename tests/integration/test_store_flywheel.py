"""The flywheel through the real command line, in separate processes: `pipec run` records calls in
the store, `pipec stats` reads it, `pipec export` writes a trainset, `pipec compile --trainset
store:` compiles from the store and records which rows it read."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from experiments.store import trace_ids_digest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PIPELINE = f"{REPO / 'tests' / 'slow_pipeline.py'}:SlowTriage"  # brings its own scripted LM


def pipec(tmp_path, *args, stdin=None):
    env = {**os.environ, "SLOW_LM_LATENCY": "0"}
    return subprocess.run([sys.executable, "-m", "experiments", *args], cwd=tmp_path, env=env, input=stdin,
                          capture_output=True, text=True, timeout=900)


def test_run_stats_export_and_compile_from_the_store(tmp_path):
    messages = [json.loads(line)["message"] for line in
                (REPO / "programs" / "data" / "triage.jsonl").read_text(encoding="utf-8").splitlines()[:10]]
    messages.append("荷物が届きません。package lost")
    inputs = "".join(json.dumps({"message": m}, ensure_ascii=False) + "\n" for m in messages)
    store = str(tmp_path / "flywheel.duckdb")

    ran = pipec(tmp_path, "run", PIPELINE, "--store", store, "--no-judges", stdin=inputs)
    assert ran.returncode == 0, ran.stderr
    assert len(ran.stdout.splitlines()) == len(messages)

    stats = pipec(tmp_path, "stats", "--store", store, "--json")
    assert stats.returncode == 0, stats.stderr
    found = json.loads(stats.stdout)
    assert found["store"]["traces"] == len(messages) and found["store"]["node_calls"] == len(messages)
    assert [r["node"] for r in found["node_latency"]] == ["classify"]

    exported = pipec(tmp_path, "export", "--store", store, "--pipeline", PIPELINE)
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    assert len(rows) == len(messages) and rows[-1]["message"] == "荷物が届きません。package lost"
    assert rows[-1]["category"] == "shipping"

    compiled = pipec(tmp_path, "compile", PIPELINE, "-o", "labeled", "--trainset", "store:", "--store", store,
                     "--json")
    assert compiled.returncode == 0, compiled.stderr
    result = json.loads(compiled.stdout)
    params = MlflowClient().get_run(result["run_id"]).data.params
    assert params["trainset.store.rows"] == str(len(messages))
    assert params["trainset.store.trace_ids_sha256"] == trace_ids_digest(r["trace_id"] for r in rows)
    assert params["trainset.store.state.traces"] == str(len(messages))
