"""pipec against a real OpenAI-compatible server: llama-cpp-python's own (``python -m
llama_cpp.server``, the ``[server]`` extra) serving the embedded GGUF on 127.0.0.1.

One key-protected server serves the module; the test that stops its server mid-compile starts
its own. Compiles are tiny (``--optimizer labeled``, two train examples, one valset example,
``--threads 1``, 48 output tokens) because the machine has two cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from experiments.cli import cli
from tests.http_server import free_port, json_server

pytestmark = pytest.mark.integration

_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
_missing = next((m for m in _SERVER_MODULES if importlib.util.find_spec(m) is None), None)
if _missing is not None:
    pytest.skip(f"llama-cpp-python's server is not installed ({_missing} is missing): "
                "pip install -e '.[server]' (make setup does)", allow_module_level=True)

MODEL = "smollm2"  # the alias the server gives the embedded GGUF
READY_SECONDS = 180  # bound on the server's start (model load) on a loaded two-core machine
TRAIN, VAL = 2, 1


class LlamaServer:
    """``python -m llama_cpp.server`` on a free port; ``posts`` counts answered chat requests."""

    def __init__(self, log: Path, api_key: str | None = None) -> None:
        from experiments.local_lm import locate_model

        self.port, self.log, self.api_key = free_port(), log, api_key
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(locate_model()), "--host", "127.0.0.1",
                   "--port", str(self.port), "--n_threads", "1", "--n_ctx", "2048", "--model_alias", MODEL,
                   "--verbose", "False"]
        if api_key:
            command += ["--api_key", api_key]
        self.handle = log.open("wb")
        self.proc = subprocess.Popen(command, stdout=self.handle, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}/v1"
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_SECONDS
        request = urllib.request.Request(f"{self.base}/models",
                                         headers={"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                pytest.fail(f"the llama.cpp server exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        self.stop()
        pytest.fail(f"the llama.cpp server was not ready after {READY_SECONDS} s: {self.log.read_text()[-2000:]}")

    @property
    def posts(self) -> int:
        return self.log.read_text(errors="replace").count('"POST /v1/chat/completions')

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.handle.close()


class FlakyProxy:
    """A proxy to ``target`` on 127.0.0.1 that answers every ``every``-th request with 503."""

    def __init__(self, target: str, every: int) -> None:
        self.requests = self.faults = 0
        self._lock = threading.Lock()
        self._target, self._every = target, every

    def answer(self, path: str, headers, body: bytes) -> tuple[int, bytes]:
        with self._lock:
            self.requests += 1
            fail = self.requests % self._every == 0
            self.faults += fail
        if fail:
            return 503, b'{"error": {"message": "overloaded, try again"}}'
        forward = urllib.request.Request(self._target + path.removeprefix("/v1"), data=body, method="POST",
                                         headers={k: v for k, v in headers.items()
                                                  if k.lower() in ("content-type", "authorization")})
        try:
            with urllib.request.urlopen(forward, timeout=300) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


def write_data(folder: Path) -> tuple[Path, Path]:
    rows = [json.loads(line) for line in (Path(__file__).parents[2] / "programs" / "data" / "triage.jsonl")
            .read_text(encoding="utf-8").splitlines() if line.strip()]
    train, val = folder / "train.jsonl", folder / "val.jsonl"
    train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:TRAIN]), encoding="utf-8")
    val.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[20:20 + VAL]), encoding="utf-8")
    return train, val


def compile_args(base: str, folder: Path, out: str) -> list[str]:
    train, val = write_data(folder)
    return ["compile", "triage", "-o", "labeled", "-p", "k=1", "--lm", f"openai/{MODEL}", "--api-base", base,
            "--trainset", str(train), "--valset", str(val), "--threads", "1", "--out", str(folder / out), "--json"]


SMALL = {"PIPEC_LM_MAX_TOKENS": "48", "PIPEC_LM_TEMPERATURE": "0", "PIPEC_LM_TIMEOUT": "120"}


def runs(uri: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    experiments = client.search_experiments()
    return client.search_runs([e.experiment_id for e in experiments]) if experiments else []


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    key = "pk-" + secrets.token_hex(16)
    srv = LlamaServer(tmp_path_factory.mktemp("server") / "server.log", api_key=key)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def fault_free(server, tmp_path_factory):
    """One compile through the server (the key in PIPEC_API_KEY); its folder, result and output."""
    folder = tmp_path_factory.mktemp("fault-free")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("PIPEC_HOME", str(folder / "pipec-home"))
        mp.setenv("PIPEC_API_KEY", server.api_key)
        for name, value in SMALL.items():
            mp.setenv(name, value)
        before = server.posts
        result = CliRunner().invoke(cli, compile_args(server.base, folder, "program.json"), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return {"folder": folder, "uri": uri, "result": json.loads(result.stdout), "output": result.output,
            "posts": server.posts - before}


def test_compile_through_the_server_end_to_end(fault_free, server):
    result = fault_free["result"]
    assert fault_free["posts"] >= 2 * VAL * 2  # baseline and compiled, two nodes per example
    assert result["baseline"]["lm_errors"] == 0 and result["compiled"]["lm_errors"] == 0
    assert result["lm"] == f"openai/{MODEL}"
    program = json.loads(Path(result["program_path"]).read_text(encoding="utf-8"))
    assert len(program["classify"]["demos"]) == 1 and len(program["reply"]["demos"]) == 1  # labeled k=1
    [run] = runs(fault_free["uri"])
    assert run.info.status == "FINISHED" and "preflight.seconds" in run.data.metrics
    assert run.data.params["lm.api_base"] == server.base and run.data.params["lm.model"] == f"openai/{MODEL}"


def test_the_api_key_is_written_nowhere(fault_free, server):
    key = server.api_key.encode()
    leaks = [str(path) for path in fault_free["folder"].rglob("*") if path.is_file() and key in path.read_bytes()]
    assert leaks == []
    assert server.api_key not in fault_free["output"]
    [run] = runs(fault_free["uri"])
    recorded = json.dumps([run.data.params, run.data.tags, run.data.metrics])
    assert server.api_key not in recorded
    written = {path.name for path in fault_free["folder"].rglob("*") if path.is_file()}
    assert {"mlflow.db", "baseline.jsonl", "compiled.jsonl", "program.json"} <= written  # the scan saw the artifacts


def test_a_503_every_fifth_call_is_retried_and_the_compile_is_the_same(fault_free, server, tmp_path, monkeypatch):
    proxy = FlakyProxy(server.base, every=5)
    monkeypatch.setenv("PIPEC_API_KEY", server.api_key)
    for name, value in SMALL.items():
        monkeypatch.setenv(name, value)
    with json_server(proxy.answer) as base:
        result = CliRunner().invoke(cli, compile_args(f"{base}/v1", tmp_path, "program.json"), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert proxy.faults >= 1 and proxy.requests >= fault_free["posts"] + proxy.faults
    flaky, clean = json.loads(result.stdout), fault_free["result"]
    assert (tmp_path / "program.json").read_text(encoding="utf-8") == \
        Path(clean["program_path"]).read_text(encoding="utf-8")
    for stage in ("baseline", "compiled"):
        assert flaky[stage]["lm_errors"] == 0
        assert (flaky[stage]["score"], flaky[stage]["nodes"]) == (clean[stage]["score"], clean[stage]["nodes"])
    answers = []
    for folder in (tmp_path, fault_free["folder"]):  # each run's artifact, where MLflow wrote it (./mlruns)
        [artifact] = [p for p in folder.rglob("compiled.jsonl") if "evaluation" in p.parts]
        answers.append([json.loads(line)["outputs"] for line in artifact.read_text(encoding="utf-8").splitlines()])
    assert answers[0] == answers[1]  # the same answers: every failed call was asked again, none scored


def test_a_wrong_key_is_one_line_exit_2_and_no_run(server, monkeypatch, tmp_path):
    monkeypatch.setenv("PIPEC_API_KEY", "wrong-" + secrets.token_hex(8))
    result = CliRunner().invoke(cli, compile_args(server.base, tmp_path, "program.json"), catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"Error: --lm openai/{MODEL}: the API key was rejected (HTTP 401): set a valid key in OPENAI_API_KEY or "
        "PIPEC_API_KEY"]
    assert runs(os.environ["MLFLOW_TRACKING_URI"]) == [] and not (tmp_path / "program.json").exists()


def test_the_server_stopped_mid_compile_fails_the_run_with_one_line(tmp_path, monkeypatch):
    server = LlamaServer(tmp_path / "server.log")
    for name, value in {**SMALL, "PIPEC_LM_RETRIES": "1"}.items():
        monkeypatch.setenv(name, value)
    stopped: dict[str, float] = {}

    def stop_after_first_answer() -> None:
        deadline = time.monotonic() + 600
        while server.posts < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        server.stop()
        stopped["at"] = time.monotonic()

    watcher = threading.Thread(target=stop_after_first_answer, daemon=True)
    watcher.start()
    try:
        result = CliRunner().invoke(cli, compile_args(server.base, tmp_path, "program.json"), catch_exceptions=False)
    finally:
        watcher.join(timeout=700)
        server.stop()
    ended = time.monotonic()
    assert "at" in stopped, "the compile never reached the server"
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: --lm openai/{MODEL}: cannot reach {server.base} ({errors[0].split(' (', 1)[1]}"]
    assert errors[0].endswith("is the server running? check --api-base")
    [run] = runs(os.environ["MLFLOW_TRACKING_URI"])
    assert run.info.status == "FAILED" and run.data.tags["pipec.failure.reason"] == "lm_unreachable"
    assert not (tmp_path / "program.json").exists()
    print(f"server stopped -> run FAILED in {ended - stopped['at']:.1f} s")  # not asserted: no timed assertions
