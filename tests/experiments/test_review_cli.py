"""`pipec review` and `pipec judge align` as a user runs them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from experiments.cli import cli
from experiments.store import Store
from tests.experiments.review_seed import seed_store, write_replier

ROOT = Path(__file__).resolve().parents[2]


def test_review_binds_loopback_unless_told_otherwise(tmp_path):
    seeded = seed_store(tmp_path / "store.duckdb")
    result = CliRunner().invoke(cli, ["review", "--store", str(seeded.path), "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "--allow-remote" in result.output


def test_review_without_a_store_says_how_to_get_one(tmp_path):
    result = CliRunner().invoke(cli, ["review", "--store", str(tmp_path / "none.duckdb")])
    assert result.exit_code == 2 and "pipec run" in result.output
    assert not (tmp_path / "none.duckdb").exists()  # nothing created


def test_pipec_review_serves_the_queue(tmp_path):
    seeded = seed_store(tmp_path / "store.duckdb")
    server = subprocess.Popen([sys.executable, "-m", "experiments", "review", "--store", str(seeded.path), "--port",
                               "0", "--reviewer", "花子"], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                              encoding="utf-8", env={**__import__("os").environ, "COLUMNS": "300"})
    try:
        seen = ""
        while "review page:" not in seen:
            line = server.stderr.readline()
            assert line, f"pipec review exited: {seen}"
            seen += line
        url = re.search(r"http://127\.0\.0\.1:\d+", seen).group(0)
        with urllib.request.urlopen(url + "/") as response:
            body = response.read().decode("utf-8")
        assert response.url.endswith("/item/t07") and "judge and human disagree" in body
        assert "value='花子' data-fixed=1" in body
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_judge_align_needs_a_pipeline_that_declares_the_rubric(tmp_path):
    seeded = seed_store(tmp_path / "store.duckdb")
    result = CliRunner().invoke(cli, ["judge", "align", "--store", str(seeded.path)])
    assert result.exit_code == 2 and "declares no judge" in result.output  # triage has no rubric


@pytest.mark.integration
def test_judge_align_prints_kappa_before_and_after_on_held_out_labels(tmp_path):
    seeded = seed_store(tmp_path / "store.duckdb")
    with Store.open(seeded.path) as store:
        for i, passed in ((2, True), (4, True), (6, True), (8, True), (9, False)):
            store.add_label(f"t0{i}", call_id=f"t0{i}/1", passed=passed, validator=seeded.judge, reviewer="b")
    spec = write_replier(tmp_path)
    out = tmp_path / "demos.jsonl"
    result = subprocess.run([sys.executable, "-m", "experiments", "judge", "align", "--store", str(seeded.path),
                             "--pipeline", spec, "--judge-lm", "local", "--seed", "1", "--out",
                             str(out), "--json"], cwd=ROOT, capture_output=True, text=True, encoding="utf-8",
                            timeout=1200)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert (found["n_train"], found["n_test"]) == (6, 4) and found["validator"] == seeded.judge
    for when in ("before", "after"):
        assert found[when]["n"] + found[when]["ungraded"] == 4
        assert found[when]["kappa"] is None or -1 <= found[when]["kappa"] <= 1
    demos = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(demos) == 6 and all("passed" in d for d in demos)
    print(f"judge align on the embedded LM: before {found['before']}, after {found['after']}")
