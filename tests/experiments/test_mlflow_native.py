"""MLflow-native records of a compile: datasets, registered prompts, the logged model, traces."""

import json

import dspy
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from experiments.compile import CompileOptions, compile_pipeline
from experiments.mlflow_native import PROMPT_ALIAS, TRACE_SAMPLE, log_program_model, prompt_name
from experiments.tracking import RunTracker
from tests.fakes import fake_lm, triage_respond


@pytest.fixture
def compiled():
    lm, _ = fake_lm(triage_respond)
    return compile_pipeline(CompileOptions("triage", "labeled", lm=lm, progress=False))


def test_train_and_val_sets_are_dataset_inputs(compiled):
    run = MlflowClient().get_run(compiled["run_id"])
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"triage-train", "triage-val"}
    for name, context in (("triage-train", "train"), ("triage-val", "val")):
        dataset = inputs[name]
        assert [t.value for t in dataset.tags if t.key == "mlflow.data.context"] == [context]
        assert dataset.dataset.digest and "triage.jsonl" in dataset.dataset.source
        rows = json.loads(dataset.dataset.profile)["num_rows"]
        assert rows == compiled["trainset" if context == "train" else "valset"]["size"]


def test_each_node_instruction_is_a_registered_prompt_version_linked_to_the_run(compiled):
    client = MlflowClient()
    second = compile_pipeline(CompileOptions("triage", "labeled", lm=fake_lm(triage_respond)[0], progress=False))
    for node in ("classify", "reply"):
        name = prompt_name("triage", node)
        assert name == f"triage.{node}"
        current = client.get_prompt_version_by_alias(name, PROMPT_ALIAS)
        assert current.version == 2 and current.tags["pipec.run_id"] == second["run_id"]
        first = client.get_prompt_version(name, 1)
        assert first.tags["pipec.run_id"] == compiled["run_id"]
        assert "{{message}}" in first.template
    assert "Classify the customer support message" in client.get_prompt_version("triage.classify", 1).template
    linked = json.loads(client.get_run(compiled["run_id"]).data.tags["mlflow.linkedPrompts"])
    assert sorted((p["name"], str(p["version"])) for p in linked) == [("triage.classify", "1"), ("triage.reply", "1")]


def test_the_program_is_an_mlflow_dspy_model_that_loads_back_and_answers(compiled, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")  # MLflow loads DSPy programs by pickle
    client = MlflowClient()
    run = client.get_run(compiled["run_id"])
    outputs = run.outputs.model_outputs
    assert len(outputs) == 1
    model = client.get_logged_model(outputs[0].model_id)
    assert model.name == "program" and model.source_run_id == compiled["run_id"]
    assert str(model.status) in ("READY", "LoggedModelStatus.READY") and model.params["optimizer"] == "labeled"
    assert mlflow.models.get_model_info(f"models:/{model.model_id}").metadata["pipeline"] == "triage"
    program = mlflow.dspy.load_model(f"models:/{model.model_id}")
    assert len(program.classify.demos) > 0  # the compiled program, not the bare pipeline
    lm, _ = fake_lm(triage_respond)
    with dspy.context(lm=lm.lm, adapter=lm.adapter):
        answer = program(message="Where is my parcel? It should have been delivered on Monday.")
    assert answer.category == "shipping" and "shipping team" in answer.reply
    # As pyfunc (serving): the LM is never saved with the program (it may hold a key), so the
    # server configures it in the wrapper's DSPy settings.
    served = mlflow.pyfunc.load_model(f"models:/{model.model_id}")
    served._model_impl.dspy_settings.update(lm=lm.lm, adapter=lm.adapter)  # mlflow.dspy's wrapper: no public hook
    assert served.predict({"message": "I forgot my password"})["category"] == "account"


def test_the_logged_model_has_the_params_queued_before_it_even_when_the_writer_is_behind():
    # The model is saved on a side thread; the params wait on the writer, held busy here, so
    # the model must not read them back from the run.
    import threading
    import time

    from programs.loader import make_pipeline

    client, release = MlflowClient(), threading.Event()
    tracker = RunTracker("t")
    with tracker.start():
        tracker.submit("holding the writer", lambda client, run_id: release.wait(60))
        tracker.params({"optimizer": "labeled", "nested": {"k": 1}})
        log_program_model(tracker, make_pipeline("triage"))
        deadline = time.monotonic() + 60
        while not (models := client.search_logged_models(experiment_ids=[tracker.experiment_id])) \
                or "READY" not in str(models[0].status):
            assert time.monotonic() < deadline, "the model was not logged while the writer was busy"
            time.sleep(0.1)
        assert not client.get_run(tracker.run_id).data.params  # the writer has not written them
        release.set()
    assert models[0].params == {"optimizer": "labeled", "nested.k": "1"}


def test_a_sample_of_the_final_evaluation_is_traced_per_node_call(compiled):
    mlflow.flush_trace_async_logging()
    traces = mlflow.search_traces(run_id=compiled["run_id"], return_type="list")
    assert len(traces) == min(TRACE_SAMPLE, compiled["valset"]["size"])
    trace = traces[0]
    spans = {span.name: span for span in trace.data.spans}
    assert {"triage", "classify", "reply"} <= set(spans)
    assert spans["classify"].parent_id == spans["triage"].span_id
    assert "message" in spans["classify"].inputs and "category" in spans["classify"].outputs
    assert spans["reply"].inputs["category"] == spans["classify"].outputs["category"]
    assert trace.info.tags["pipec.stage"] == "compiled"


def test_records_can_be_skipped(compiled):
    lm, _ = fake_lm(triage_respond)
    bare = compile_pipeline(CompileOptions("triage", "labeled", lm=lm, progress=False, mlflow_records=False,
                                           mlflow_model=False))
    run = MlflowClient().get_run(bare["run_id"])
    assert not run.inputs.dataset_inputs and not run.outputs.model_outputs
    assert "mlflow.linkedPrompts" not in run.data.tags
