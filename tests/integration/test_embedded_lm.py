"""The real embedded model (SmolLM2-135M through llama.cpp): no fakes, no network."""

import json
import os
import subprocess
import sys

import dspy
import pytest
from mlflow.tracking import MlflowClient

from experiments.evaluate import lm_usage
from experiments.lm import make_lm
from programs.builtin import TRIAGE_LABELS, Triage, builtin_dataset

pytestmark = pytest.mark.integration


def test_constrained_decoding_keeps_the_classifier_in_its_label_set():
    config = make_lm("local", cache=False)
    with dspy.context(lm=config.lm, adapter=config.adapter):
        pipeline = Triage()
        for message in ("My card was charged twice.", "荷物がまだ届きません。", "asdf qwerty"):
            assert pipeline.classify(message=message).category in TRIAGE_LABELS


def test_dspy_cache_serves_a_repeated_call(tmp_path):
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)
    try:
        config = make_lm("local")
        with dspy.context(lm=config.lm, adapter=config.adapter):
            node = Triage().classify
            with lm_usage() as first:
                a = node(message="Where is my parcel?").category
            with lm_usage() as second:
                b = node(message="Where is my parcel?").category
        assert a == b and first.calls == 1 and second.calls == 0 and first.tokens > 0
    finally:
        dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)


def test_cli_compiles_triage_on_the_embedded_lm_and_tracks_it(tmp_path):
    rows = builtin_dataset("triage").read_text(encoding="utf-8").splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(rows[:16]) + "\n", encoding="utf-8")
    (tmp_path / "val.jsonl").write_text("\n".join(rows[40:48]) + "\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "experiments", "compile", "triage", "--optimizer", "bootstrap", "--lm", "local",
         "--trainset", "train.jsonl", "--valset", "val.jsonl", "--json"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
        # A DSPy cache of its own: the user's (~/.dspy_cache) would answer a rerun without LM calls.
        env={**os.environ, "DSPY_CACHEDIR": str(tmp_path / "dspy-cache")},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert set(result["compiled"]["nodes"]) == {"classify", "reply"}
    assert result["compile"]["lm_calls"] > 0 and result["baseline"]["lm_calls"] > 0
    run = MlflowClient().get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["lm.model"] == "local/smollm2-135m-instruct"
    assert run.data.metrics["compiled.score"] == pytest.approx(result["compiled"]["score"])
    assert (tmp_path / result["program_path"]).exists()
