"""``pipec compile --resume``: a killed compile re-run from its record, LM calls answered by the cache."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.experiments.test_runs import SLOW_PIPELINE, running_run, start_compile, wait_for

TRIAGE = Path(__file__).resolve().parents[2] / "programs" / "data" / "triage.jsonl"
FLAGS = ("--optimizer", "bootstrap-rs", "--param", "num_candidate_programs=2", "--threads", "2", "--seed", "3")


def compile_flags(trainset: Path) -> list[str]:
    return [SLOW_PIPELINE, "--trainset", str(trainset), *FLAGS]


def run_pipec(tmp_path: Path, *args: str, log: str, cache: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "SLOW_LM_LATENCY": "0.02", "SLOW_LM_LOG": str(tmp_path / log),
           "DSPY_CACHEDIR": str(tmp_path / cache)}
    done = subprocess.run([sys.executable, "-m", "experiments", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert not check or done.returncode == 0, done.stderr[-3000:]
    return done


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split() if path.exists() else []


def test_resume_of_a_killed_compile_redoes_only_the_calls_in_flight(tmp_path):
    trainset = tmp_path / "triage.jsonl"
    shutil.copyfile(TRIAGE, trainset)
    # The uninterrupted compile, on a DSPy disk cache of its own: every request it sends to the LM.
    full = json.loads(run_pipec(tmp_path, "compile", *compile_flags(trainset), "--json", log="full.log",
                                cache="cache-full").stdout)
    uninterrupted = lines(tmp_path / "full.log")
    assert len(uninterrupted) == len(set(uninterrupted)) > 100

    # The same compile killed halfway through its LM calls.
    process = start_compile(tmp_path, *FLAGS, log="first.log", cache="cache", trainset=str(trainset))
    try:
        run = wait_for(lambda: running_run(process.pid), process, "its run was RUNNING")
        wait_for(lambda: len(lines(tmp_path / "first.log")) >= len(uninterrupted) // 2, process,
                 "half of its LM calls were made")
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    before_kill = lines(tmp_path / "first.log")

    resumed = json.loads(run_pipec(tmp_path, "compile", "--resume", run.info.run_id, "--json", log="second.log",
                                   cache="cache").stdout)
    after = lines(tmp_path / "second.log")
    redone = set(before_kill) & set(after)
    print(f"\nresume: uninterrupted compile {len(uninterrupted)} LM calls; killed after {len(before_kill)}; "
          f"resumed compile made {len(after)}, of which {len(redone)} redone")
    assert set(before_kill) | set(after) == set(uninterrupted)  # the same compile, nothing else asked
    assert len(redone) <= 2  # at most the calls in flight on the two threads when the process died
    assert len(after) <= len(uninterrupted) - len(before_kill) + 2
    for stage in ("baseline", "compiled"):  # the same seed, the same answers: the same result
        assert resumed[stage]["score"] == pytest.approx(full[stage]["score"])

    client = MlflowClient()
    new_run = client.get_run(resumed["run_id"])
    assert new_run.data.tags["pipec.resumed_from"] == run.info.run_id
    assert new_run.data.params["seed"] == "3" and new_run.info.status == "FINISHED"
    assert client.get_run(run.info.run_id).info.status == "KILLED"  # found by the resumed compile


def test_resume_refuses_a_changed_dataset_and_extra_flags(tmp_path):
    trainset = tmp_path / "triage.jsonl"
    shutil.copyfile(TRIAGE, trainset)
    first = json.loads(run_pipec(tmp_path, "compile", *compile_flags(trainset), "--json", log="a.log",
                                 cache="cache").stdout)

    extra = run_pipec(tmp_path, "compile", "--resume", first["run_id"], "--seed", "4", log="b.log", cache="cache",
                      check=False)
    assert extra.returncode == 2 and "drop --seed" in extra.stderr

    rows = trainset.read_text(encoding="utf-8").splitlines()
    trainset.write_text("\n".join(rows[:-1]) + "\n", encoding="utf-8")
    changed = run_pipec(tmp_path, "compile", "--resume", first["run_id"], log="b.log", cache="cache", check=False)
    assert changed.returncode == 2
    assert f"{trainset}: the trainset changed since run {first['run_id']}" in changed.stderr
    assert not (tmp_path / "b.log").exists()  # refused before any LM call
    runs = MlflowClient().search_runs([first["experiment_id"]], filter_string="tags.`pipec.kind` = 'compile'")
    assert [r.info.run_id for r in runs] == [first["run_id"]]  # no run for the refused resumes


def test_resume_of_an_unknown_run_is_one_line(tmp_path):
    done = run_pipec(tmp_path, "compile", "--resume", "0123456789abcdef", log="c.log", cache="cache", check=False)
    assert done.returncode == 2 and "--resume 0123456789abcdef: no such run" in done.stderr
