"""The sandbox process: results come back, a child that overruns is killed, one that hits an
rlimit dies alone, and the zygote survives both."""

import os
import time

from programs.sandbox import run_sandboxed


def test_a_call_returns_its_value_from_another_process():
    outcome = run_sandboxed("os:getpid", (), timeout=5)
    assert outcome.status == "ok" and outcome.value != os.getpid()


def test_an_exception_comes_back_as_text():
    outcome = run_sandboxed("json:loads", ("{oops",), timeout=5)
    assert outcome.status == "error" and outcome.value.startswith("JSONDecodeError")


def test_a_child_that_overruns_is_killed_at_the_deadline():
    started = time.perf_counter()
    outcome = run_sandboxed("time:sleep", (30,), timeout=0.5)
    assert outcome.status == "timeout" and time.perf_counter() - started < 2
    assert run_sandboxed("operator:add", (2, 3), timeout=5).value == 5  # the zygote lives on


def test_no_file_can_be_written(tmp_path):
    target = tmp_path / "written.txt"
    outcome = run_sandboxed("pathlib:Path.write_text", (target, "x" * 10), timeout=5)
    assert outcome.status == "error" and "File too large" in outcome.value
    assert not target.exists() or target.stat().st_size == 0
    assert run_sandboxed("pathlib:Path.exists", (tmp_path,), timeout=5).value is True  # reading works
