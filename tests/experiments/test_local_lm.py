"""The embedded LM's plumbing that needs no model: schema extraction, model location, settings."""

import pytest

from experiments.lm import make_lm
from experiments.local_lm import LOCAL_MODEL_NAME, _schema_of, locate_model
from programs import ConfigError, LMError

SCHEMA = {"type": "object", "properties": {"category": {"enum": ["a", "b"]}}}


@pytest.mark.parametrize("response_format, expected", [
    ({"type": "json_schema", "schema": SCHEMA, "name": "X", "strict": True}, SCHEMA),  # what DSPy sends
    ({"type": "json_schema", "json_schema": {"name": "X", "schema": SCHEMA}}, SCHEMA),  # OpenAI's shape
    ({"type": "json_object"}, None),
    (None, None),
])
def test_schema_of(response_format, expected):
    assert _schema_of(response_format) == expected


def test_model_file_ships_in_the_package():
    path = locate_model()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_model_override(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPEC_LOCAL_MODEL", str(tmp_path / "missing.gguf"))
    with pytest.raises(LMError, match=r"PIPEC_LOCAL_MODEL=.*is not a file"):
        locate_model()


def test_local_settings_are_recorded_without_loading_the_model():
    config = make_lm("local")
    assert config.settings["model"] == LOCAL_MODEL_NAME
    assert config.settings["temperature"] == 0.0 and config.settings["adapter"] == "JSONAdapter"
    assert config.lm.model == LOCAL_MODEL_NAME


def test_provider_settings_never_hold_the_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    config = make_lm("openai/gpt-4o-mini")
    assert "sk-secret-value" not in repr(config.settings)
    served = make_lm("my-model", api_base="http://127.0.0.1:8000/v1")
    assert served.settings["model"] == "openai/my-model" and served.settings["api_base"] == "http://127.0.0.1:8000/v1"
    with pytest.raises(ConfigError, match="--api-base does not apply to --lm local"):
        make_lm("local", api_base="http://127.0.0.1:8000/v1")


def test_llama_threads_default_to_half_the_cores_and_follow_the_environment(monkeypatch):
    from experiments.local_lm import LocalEngine

    monkeypatch.delenv("PIPEC_LOCAL_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert LocalEngine().n_threads == 1
    monkeypatch.setenv("PIPEC_LOCAL_THREADS", "3")
    assert LocalEngine().n_threads == 3 and LocalEngine(n_threads=2).n_threads == 2
    monkeypatch.setenv("PIPEC_LOCAL_THREADS", "many")
    with pytest.raises(LMError, match="PIPEC_LOCAL_THREADS"):
        LocalEngine()
