"""The preflight: no key, an unknown provider, a rejected key or a dead --api-base is found before
a run exists; the embedded LM is not called; a transient failure does not stop the job.

The OpenAI-compatible endpoint here is a real HTTP server on 127.0.0.1 (tests.http_server), answering with
a fixed status so each case is exact."""

from __future__ import annotations

import json

import pytest

from experiments.lm import make_lm
from experiments.preflight import lms_in, preflight
from programs.errors import LMAuthError, LMNotFoundError, LMUnreachableError
from tests.fakes import fake_lm, triage_respond
from tests.http_server import free_port, json_server

ANSWER = {"id": "c1", "object": "chat.completion", "created": 0, "model": "served",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}


@pytest.fixture
def endpoint():
    """An OpenAI-compatible /v1 on a free port answering ``state["status"]``; requests are kept."""
    state = {"status": 200, "requests": []}

    def answer(path, headers, body):
        state["requests"].append({"body": json.loads(body), "auth": headers.get("Authorization")})
        status = state["status"]
        payload = ANSWER if status == 200 else {"error": {"message": f"status {status}", "code": None}}
        return status, json.dumps(payload).encode()

    with json_server(answer) as base:
        state["base"] = f"{base}/v1"
        yield state


def test_a_working_endpoint_answers_one_tiny_uncached_request(endpoint):
    config = make_lm("served", api_base=endpoint["base"])
    result = preflight(lms_in(("--lm", config)))
    assert result.checked == {"--lm served": "ok"}
    [request] = endpoint["requests"]
    assert request["body"].get("max_completion_tokens", request["body"].get("max_tokens")) == 8
    assert request["body"]["model"] == "served"
    preflight(lms_in(("--lm", config)))
    assert len(endpoint["requests"]) == 2  # the cache is bypassed: each preflight really asks
    assert config.lm.history == []  # the probe is a copy: the task LM's history stays clean


def test_a_rejected_key_is_found_before_the_run(endpoint, monkeypatch):
    monkeypatch.setenv("PIPEC_API_KEY", "wrong-key-123456")
    endpoint["status"] = 401
    config = make_lm("served", api_base=endpoint["base"])
    with pytest.raises(LMAuthError, match=r"^--lm served: the API key was rejected \(HTTP 401\)") as caught:
        preflight(lms_in(("--lm", config)))
    assert "wrong-key-123456" not in str(caught.value)
    assert endpoint["requests"][0]["auth"] == "Bearer wrong-key-123456"


def test_a_transient_failure_is_noted_not_fatal(endpoint, monkeypatch):
    monkeypatch.setenv("PIPEC_LM_RETRIES", "0")
    endpoint["status"] = 503
    notes = []
    result = preflight(lms_in(("--lm", make_lm("served", api_base=endpoint["base"]))), say=notes.append)
    assert result.checked["--lm served"].startswith("LMServerError: --lm served: the provider failed (HTTP 503)")
    assert len(notes) == 1 and notes[0].endswith("(transient; the run retries)")


def test_a_dead_api_base_is_unreachable():
    base = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(LMUnreachableError, match=f"cannot reach {base}"):
        preflight(lms_in(("--judge-lm", make_lm("served", api_base=base, flag="--judge-lm"))))


def test_no_key_is_found_without_a_request(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(LMAuthError, match=r"^--lm openai/gpt-4o-mini: no API key: set OPENAI_API_KEY"):
        preflight(lms_in(("--lm", make_lm("openai/gpt-4o-mini"))))


def test_an_unknown_provider_is_found_without_a_request():
    with pytest.raises(LMNotFoundError, match=r"^unknown provider 'nosuchprovider' in --lm nosuchprovider/x: "):
        preflight(lms_in(("--lm", make_lm("nosuchprovider/x"))))


def test_an_engine_lm_is_not_called_and_every_lm_is_checked_once(endpoint):
    embedded, engine = fake_lm(triage_respond)
    remote = make_lm("served", api_base=endpoint["base"], flag="--judge-lm")

    class Optimizer:  # like MIPROv2 (prompt_model/task_model) or GEPA (reflection_lm)
        def __init__(self):
            self.prompt_model, self.task_model, self.k = remote.lm, embedded.lm, 3

    found = lms_in(("--lm", embedded), ("--judge-lm", remote), ("--optimizer", Optimizer()), ("--x", None))
    assert [flag for flag, _ in found] == ["--lm", "--judge-lm"]
    result = preflight(found)
    assert result.checked == {"--lm fake/scripted": "embedded", "--judge-lm served": "ok"}
    assert engine.requests == [] and len(endpoint["requests"]) == 1
