import json

import pytest

from experiments.program_meta import program_meta, read_program_meta, stamp_program
from programs.builtin import Triage
from programs.errors import PipelineError


def test_a_stamped_program_still_loads_in_dspy(tmp_path):
    program = Triage()
    program.classify.demos = []
    path = tmp_path / "p.json"
    program.save(str(path))
    stamp_program(path, program_meta("triage", program))
    assert read_program_meta(path) == {"pipeline": "triage", "class": "programs.builtin.Triage"}
    Triage().load(str(path))


def test_a_file_pipeline_is_recorded_by_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    meta = program_meta("./pipes/mine.py:Mine", Triage())
    assert meta["pipeline"] == f"{tmp_path}/pipes/mine.py:Mine"


def test_reading_bad_files(tmp_path):
    assert read_program_meta(_write(tmp_path / "plain.json", {"metadata": {}})) is None
    with pytest.raises(PipelineError, match="program file not found"):
        read_program_meta(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{nope", encoding="utf-8")
    with pytest.raises(PipelineError, match="not a saved DSPy program"):
        read_program_meta(tmp_path / "bad.json")


def _write(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path
