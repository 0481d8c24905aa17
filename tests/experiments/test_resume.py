"""``pipec compile --resume``: a killed compile re-run from its record, LM calls answered by the cache."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.killing import SLOW_PIPELINE, TRIAGE, kill_compile, pipec, slow_env, start_compile

FLAGS = ("--optimizer", "bootstrap-rs", "--param", "num_candidate_programs=2", "--threads", "2", "--seed", "3")


def compile_flags(trainset: Path) -> list[str]:
    return [SLOW_PIPELINE, "--trainset", str(trainset), *FLAGS]


def run_pipec(tmp_path: Path, *args: str, log: str, cache: str, check: bool = True) -> subprocess.CompletedProcess:
    return pipec(*args, env=slow_env(tmp_path, log, cache, "0.02"), cwd=tmp_path, check=check)


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
    run = kill_compile(process, lambda: len(lines(tmp_path / "first.log")) >= len(uninterrupted) // 2,
                       "half of its LM calls were made")
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


def test_resume_of_a_store_trainset_needs_the_same_store_rows(tmp_path, monkeypatch):
    """A compile that trained on the flywheel store resumes only on the rows it trained on: the same
    rows resume (read from the store file the run read); a correction (same count, other content)
    or a new trace (another count) is one line, exit 2, and no run."""
    from click.testing import CliRunner

    from experiments.cli import cli
    from experiments.compile import CompileOptions, compile_pipeline
    from experiments.resume import resume_options
    from experiments.store import Store
    from tests.fakes import fake_lm, triage_respond
    from tests.store_traces import triage_trace

    store = tmp_path / "flywheel.duckdb"
    rows = [json.loads(line) for line in TRIAGE.read_text(encoding="utf-8").splitlines()[::8][:6]]
    with Store.open(store) as opened:  # six recorded triage calls, one per bundled example
        opened.append_traces([triage_trace(f"t{i}", row["message"], row["category"], row["reply"])
                              for i, row in enumerate(rows)], {})
    lm, _ = fake_lm(triage_respond)
    first = compile_pipeline(CompileOptions("triage", "bootstrap", trainset="store:", store=str(store), lm=lm, seed=1,
                                            progress=False, out=str(tmp_path / "first.json")))
    run_id = first["run_id"]

    (tmp_path / "elsewhere").mkdir()  # another working directory and no --store: the run's store is read
    monkeypatch.chdir(tmp_path / "elsewhere")
    opts = resume_options(run_id, {"lm": lm, "out": str(tmp_path / "again.json"), "progress": False})
    assert (opts.trainset, opts.store) == ("store:pipeline=triage", str(store))
    again = compile_pipeline(opts)
    client = MlflowClient()
    before, after = client.get_run(run_id), client.get_run(again["run_id"])
    assert after.data.tags["pipec.resumed_from"] == run_id and after.info.status == "FINISHED"
    for param in ("trainset.sha256", "trainset.store.rows", "trainset.store.trace_ids_sha256"):
        assert after.data.params[param] == before.data.params[param]
    assert (again["baseline"]["score"], again["compiled"]["score"]) == (first["baseline"]["score"],
                                                                        first["compiled"]["score"])
    digest = before.data.params["trainset.sha256"]

    def refused(now: str) -> None:
        done = CliRunner().invoke(cli, ["compile", "--resume", run_id, "--out", str(tmp_path / "refused.json")])
        assert done.exit_code == 2, done.output
        [line] = [line for line in done.output.splitlines() if line.startswith("Error:")]
        assert line.startswith(f"Error: {store}#store:: the trainset rows changed since run {run_id} (then 6 rows, "
                               f"sha256 {digest[:12]}; now {now}")
        assert line.endswith("start a new compile to train on the store as it is")
        assert not (tmp_path / "refused.json").exists()

    with Store.open(store) as opened:  # a reviewer corrects a label: the same count, other content
        opened.add_correction("t0", {"category": "refund"}, node="classify", reviewer="ann", comment="返金の件")
    refused("6 rows, sha256 ")
    with Store.open(store) as opened:  # one more recorded trace: another count
        opened.append_traces([triage_trace("t6", "アプリがエラーで起動しません。", "technical",
                                           "ご不便をおかけしています。再インストールをお試しください。")], {})
    refused("7 rows, sha256 ")
    runs = client.search_runs([before.info.experiment_id], filter_string="tags.`pipec.kind` = 'compile'")
    assert len(runs) == 2  # the first compile and its resume; none for the refused ones
