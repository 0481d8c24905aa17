"""`pipec ui` serves the store pipec writes to (a real MLflow server on a loopback port)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from experiments.compile import CompileOptions, compile_pipeline
from tests.fakes import fake_lm, triage_respond

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ui_lists_the_compile_run(tmp_path):
    lm, _ = fake_lm(triage_respond)
    run_id = compile_pipeline(CompileOptions("triage", "labeled", lm=lm, progress=False))["run_id"]
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}  # the CLI's own default
    server = subprocess.Popen([sys.executable, "-m", "experiments", "ui", "--port", str(port)], cwd=tmp_path,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, body = time.monotonic() + 240, None
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/runs/search", method="POST",
            data=json.dumps({"experiment_ids": ["1"], "max_results": 10}).encode(),
            headers={"Content-Type": "application/json"})
        while time.monotonic() < deadline and body is None:
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    body = json.load(response)
            except OSError:
                assert server.poll() is None, "pipec ui exited"
                time.sleep(1)
        assert body is not None, "pipec ui did not answer within 240 s"
        assert run_id in [run["info"]["run_id"] for run in body["runs"]]
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
