"""The ``pipec`` command line: compile pipelines, list tracked runs, open the MLflow UI."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any

import click

from experiments.review_cli import judge as judge_group
from experiments.review_cli import review_cmd
from programs.errors import LMConfigError, PipecError, StoreError, UserError

__all__ = ["cli", "main"]


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _say(message: str) -> None:
    _console(stderr=True).print(f"[dim]pipec:[/dim] {message}")


def _quiet_libraries() -> None:
    """Keep third-party chatter out of the user's terminal; warnings still show."""
    for name in ("LiteLLM", "litellm", "httpx", "mlflow", "dspy", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Logging the program as an mlflow.dspy model saves it with DSPy's pickle-based saver, which
    # warns about *loading* pickles on every save; the README says how to load it.
    for name in ("dspy.primitives.base_module", "dspy.dsp.utils.settings"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Truncation is reported per call; the validators already report over-long output per node.
    logging.getLogger("dspy.clients.lm").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read by mlflow when it is imported
    # litellm fetches its model cost map from the network at import; offline, that fetch logs a
    # warning whose handler imports during the import and deadlocks the MLflow server (pipec ui).
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def _score_table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=f"{result['pipeline']} · {result['optimizer']} · {result['lm']}")
    table.add_column("")
    table.add_column("baseline", justify="right")
    table.add_column("compiled", justify="right")
    table.add_column("Δ", justify="right")

    def row(label: str, before: float, after: float) -> None:
        delta = after - before
        style = "green" if delta > 0 else "red" if delta < 0 else ""
        table.add_row(label, f"{before:.3f}", f"{after:.3f}", f"[{style}]{delta:+.3f}[/]" if style else f"{delta:+.3f}")

    row("pipeline score", result["baseline"]["score"], result["compiled"]["score"])
    for node, before in result["baseline"]["nodes"].items():
        row(f"  node {node}", before, result["compiled"]["nodes"][node])
    return table


def _print_result(result: dict[str, Any]) -> None:
    console = _console()
    console.print(_score_table(result))
    calls = (f"LM calls: {result['baseline']['lm_calls']} baseline, {result['compile']['lm_calls']} compiling, "
             f"{result['compiled']['lm_calls']} compiled ({result['seconds']:.0f} s)")
    console.print(calls)
    console.print(f"Program: {result['program_path']}")
    if result["run_id"]:
        console.print(f"MLflow run: {result['run_id']} in {result['tracking_uri']}")
        console.print("Compare runs: [bold]pipec ui[/bold] (or: mlflow ui --backend-store-uri "
                      f"{result['tracking_uri']})")


def _run(fn: Callable[[], Any]) -> Any:
    """Runs a job; its chatter (DSPy prints progress to stdout) goes to stderr, so stdout holds
    only the command's result (one JSON object with --json)."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return fn()
    except StoreError as exc:  # one line, exit 2: the store is busy, missing or from a newer pipec
        raise _StoreProblem(str(exc)) from exc
    except LMConfigError as exc:  # one line naming the model and the fix, exit 2 (see experiments.lm_errors)
        raise _StoreProblem(str(exc)) from exc
    except UserError as exc:
        raise click.UsageError(str(exc)) from exc
    except PipecError as exc:
        raise click.ClickException(str(exc)) from exc


class _StoreProblem(click.ClickException):
    """A user error told in one line (no usage text), exit status 2: a store or LM setting."""

    exit_code = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="pipec")
def cli() -> None:
    """pipec: compile multi-step LLM pipelines (DSPy) and track every compile in MLflow.

    \b
    Quick tour:
      pipec demo                                  compile the built-in triage pipeline locally
      pipec compile triage --optimizer bootstrap  the same, step by step
      pipec evaluate compiled/triage-….json       score a compiled program per node
      pipec run compiled/triage-….json -i in.jsonl  answer JSONL inputs, recording every call
      pipec runs list                             the tracked compile runs
      pipec ui                                    compare them in the MLflow UI
      pipec review                                label and correct recorded calls in the browser

    Runs go to $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory.
    """
    _quiet_libraries()


def _optimizer_help() -> str:
    from optimizers.registry import OPTIMIZERS

    return "; ".join(f"{name}: {spec.summary}" for name, spec in OPTIMIZERS.items())


_LM_HELP = ("'local' (the embedded SmolLM2-135M, no key needed) or a LiteLLM model string such as "
            "openai/gpt-4o-mini (key from the environment, e.g. OPENAI_API_KEY). Default: $PIPEC_LM, else local.")
_JUDGE_LM_HELP = ("The LM of the writers' LLM judges (nodes with a 'rubric' rule), in the same forms as --lm. "
                  "Default: $PIPEC_JUDGE_LM, else the task LM.")
_PREFLIGHT_HELP = ("Skip the preflight. Before a run starts, every remote LM it will use (--lm, --judge-lm, the "
                   "optimizer's) has its provider and key checked and answers one tiny uncached request (8 "
                   "tokens, about one round trip), so a missing or rejected key, an unknown model or a dead "
                   "--api-base is one line and exit status 2, with no run. The embedded LM needs no call.")


@cli.command("compile")
@click.argument("pipeline", required=False)
@click.option("--trainset", type=click.Path(dir_okay=False), help="JSONL or CSV trainset, or store:[FILTERS] "
              "for the flywheel store's traces of this pipeline (store:approved, store:node=NAME, "
              "store:pipeline=NAME; as pipec export writes them). Optional for a built-in pipeline (its bundled "
              "dataset is used).")
@click.option("--valset", type=click.Path(dir_okay=False), help="JSONL or CSV valset. Default: a seeded split "
              "of the trainset (60/40).")
@click.option("--optimizer", "-o", help="Optimizer name (required). " + "See `pipec optimizers`.")
@click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE",
              help="An optimizer setting (constructor or compile argument); repeatable.")
@click.option("--resume", metavar="RUN_ID", help="Re-run compile run RUN_ID (killed, failed or finished) with "
              "its recorded pipeline, optimizer, settings, LM, seed and datasets (their hashes must still "
              "match); LM calls it completed are answered by DSPy's cache. Only --out and --json combine "
              "with it.")
@click.option("--lm", envvar="PIPEC_LM", default=None, help=_LM_HELP)
@click.option("--api-base", envvar="PIPEC_API_BASE", help="Base URL of an OpenAI-compatible server "
              "(vLLM, Ollama, llama.cpp server), e.g. http://localhost:8000/v1.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for splits and optimizers.")
@click.option("--out", type=click.Path(dir_okay=False), help="Where to save the compiled program (DSPy JSON). "
              "Default: compiled/<pipeline>-<optimizer>-<time>.json")
@click.option("--threads", type=click.IntRange(1, 256), help="Evaluation threads. Default: 1 for the local "
              "LM (one model, one lock), 8 otherwise.")
@click.option("--experiment", envvar="PIPEC_EXPERIMENT", default="pipec", show_default=True,
              help="MLflow experiment name.")
@click.option("--no-cache", is_flag=True, help="Bypass DSPy's LM response cache.")
@click.option("--judge-lm", envvar="PIPEC_JUDGE_LM", default=None, help=_JUDGE_LM_HELP)
@click.option("--prompt-lm", envvar="PIPEC_PROMPT_LM", default=None, help="The LM that writes prompts for the "
              "textual-feedback optimizers (protegi, opro, ape, evoprompt, feedback, human), in the same forms as "
              "--lm. Default: $PIPEC_PROMPT_LM, else the task LM.")
@click.option("--store", envvar="PIPEC_STORE", metavar="PATH", help="The flywheel store a store: trainset reads. "
              "Default: $PIPEC_STORE, else $PIPEC_HOME/store.duckdb.")
@click.option("--repeats", type=click.IntRange(1, 100), default=1, show_default=True,
              help="Run the final evaluation N times with DSPy's cache bypassed: mean and 95% interval per node "
              "and overall, and how often each example's verdict flips.")
@click.option("--max-cost", type=click.FloatRange(0.0), metavar="USD", help="Dollars the optimizer may spend "
              "(LiteLLM's price map; the embedded LM costs 0). pipec's textual optimizers stop with their best "
              "program; DSPy's own keep no partial result, so the uncompiled program is kept and the run says so.")
@click.option("--no-mlflow-model", is_flag=True, help="Do not log the compiled program as an mlflow.dspy model "
              "(the program JSON is logged either way).")
@click.option("--no-mlflow-records", is_flag=True, help="Do not log the MLflow dataset inputs, Prompt Registry "
              "versions and sample traces (they add about a second or more per compile on a sqlite store).")
@click.option("--no-preflight", is_flag=True, help=_PREFLIGHT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def compile_cmd(pipeline: str, trainset: str | None, valset: str | None, optimizer: str, params: tuple[str, ...],
                lm: str | None, api_base: str | None, seed: int, out: str | None, threads: int | None,
                experiment: str, no_cache: bool, judge_lm: str | None, as_json: bool, resume: str | None,
                prompt_lm: str | None = None, store: str | None = None, repeats: int = 1,
                max_cost: float | None = None, no_mlflow_model: bool = False, no_preflight: bool = False,
                no_mlflow_records: bool = False) -> None:
    """Compile PIPELINE (a built-in name such as triage or sql, or path/to/file.py:ClassName).

    Evaluates the pipeline on the valset, compiles it with the optimizer on the trainset,
    evaluates the compiled program, saves it, and records everything as one MLflow run.
    """
    from experiments.compile import CompileOptions, compile_pipeline

    if resume:
        _check_resume_flags(pipeline)
        from experiments.resume import resume_options

        opts = _run(lambda: resume_options(resume, {"out": out, "progress": True}))
        _say(f"Resuming run {resume}: {opts.pipeline} with {opts.optimizer}, seed {opts.seed}.")
    else:
        if not pipeline or not optimizer:
            raise click.UsageError("give PIPELINE and --optimizer, or --resume RUN_ID")
        opts = CompileOptions(pipeline=pipeline, optimizer=optimizer, trainset=trainset, valset=valset,
                              params=params, lm=lm, api_base=api_base, seed=seed, out=out, threads=threads,
                              experiment=experiment, progress=True, cache=not no_cache, judge_lm=judge_lm,
                              prompt_lm=prompt_lm, store=store, repeats=repeats, max_cost=max_cost,
                              mlflow_model=not no_mlflow_model, preflight=not no_preflight,
                              mlflow_records=not no_mlflow_records)
    result = _run(lambda: compile_pipeline(opts, say=_say))
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False))
    else:
        _print_result(result)


def _check_resume_flags(pipeline: str | None) -> None:
    """--resume takes everything from the run; a flag that would change the compile is an error."""
    ctx = click.get_current_context()
    given = [f"--{'param' if name == 'params' else name.replace('_', '-')}" for name in ctx.params
             if name not in ("resume", "out", "as_json", "pipeline")
             and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
    if pipeline:
        given.insert(0, f"PIPELINE ({pipeline})")
    if given:
        raise click.UsageError(f"--resume re-runs the recorded compile; drop {', '.join(given)} "
                               "(only --out and --json combine with --resume)")


# What the demo runs per optimizer: `--param` settings of `pipec compile`, and what they mean, said
# before the run starts. knn's tuning (k, embedding, order on the valset) would take the embedded LM
# well past 5 minutes on 2 cores, so the demo runs it untuned. It retrieves for the classifier only:
# retrieved reply demos lead the 135M model to run its replies to the writer's token cap, while the
# classifier is where retrieval helps. The README's measured gains are with tuning, on every node.
_DEMO_PARAMS: dict[str, tuple[tuple[str, ...], str]] = {
    "knn": (("nodes=classify", "k=4", "max_lm_calls=0"),
            "node classify takes the 4 training messages nearest each message as its demos (hash embedding, no "
            "tuning); node reply keeps its zero-shot prompt, so its score moves only with the category it is "
            "given"),
}


@cli.command()
@click.option("--optimizer", "-o", default="knn", show_default=True, help="Optimizer to demonstrate. knn (the "
              "largest measured gain, see the README) runs untuned on the classifier node only: --param "
              "nodes=classify k=4 max_lm_calls=0. Other optimizers run with pipec's defaults.")
@click.option("--lm", envvar="PIPEC_LM", default="local", show_default=True, help=_LM_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def demo(optimizer: str, lm: str, as_json: bool) -> None:
    """Compile the built-in triage pipeline on its bundled dataset, tracked in MLflow.

    Runs on the embedded LM by default: no key, no server, a few minutes on two cores.
    """
    from experiments.compile import CompileOptions, compile_pipeline

    _say("demo: compiling the built-in 'triage' pipeline (classifier -> writer).")
    params, meaning = _DEMO_PARAMS.get(optimizer, ((), ""))
    if params:
        _say(f"demo: {optimizer} with {' '.join('--param ' + p for p in params)}: {meaning}. The same compile: "
             f"`pipec compile triage --optimizer {optimizer} {' '.join('--param ' + p for p in params)}`; "
             f"without them, {optimizer} tunes its settings on the valset for every node.")
    opts = CompileOptions(pipeline="triage", optimizer=optimizer, lm=lm, params=params,
                          extra_tags={"pipec.demo": "true"})
    result = _run(lambda: compile_pipeline(opts, say=_say))
    if as_json:
        click.echo(json.dumps({**result, "params": list(params)}, ensure_ascii=False))
    else:
        _print_result(result)
        if params:
            click.echo(f"{optimizer} ran with --param {' --param '.join(params)}: {meaning}.")


_REPEATS_HELP = ("Evaluate N times with DSPy's cache bypassed: mean and 95% interval per node and overall, "
                 "and how often each example's verdict flips. At temperature 0 a deterministic LM (the embedded "
                 "one) repeats itself exactly: add --temperature to sample.")
_TEMPERATURE_HELP = "The task LM's sampling temperature (default: 0 for the embedded LM, the provider's otherwise)."


def _repeats_table(summary: dict[str, Any]) -> Any:
    from rich.table import Table

    def interval(entry: dict[str, Any]) -> str:
        return "–" if entry["low"] is None else f"[{entry['low']:.3f}, {entry['high']:.3f}]"

    table = Table(title=f"{summary['repeats']} repeats · {summary['resampling']['note']}")
    for column in ("", "mean", f"{summary['level']:.0%} interval", "per repeat", "flips", "examples flipped"):
        table.add_column(column, justify="left" if column in ("", "per repeat") else "right")
    score = summary["score"]
    table.add_row("pipeline", "–" if score["mean"] is None else f"{score['mean']:.3f}", interval(score),
                  " ".join("–" if v is None else f"{v:.3f}" for v in score["repeats"]),
                  str(sum(e["flips"] for e in summary["examples"])), str(summary["flipped_examples"]))
    for node, entry in summary["nodes"].items():
        table.add_row(f"  node {node}", "–" if entry["mean"] is None else f"{entry['mean']:.3f}", interval(entry),
                      " ".join("–" if v is None else f"{v:.3f}" for v in entry["repeats"]),
                      str(entry["flips"]), str(entry["flipped_examples"]))
    return table


@cli.command("evaluate")
@click.argument("target", metavar="PIPELINE_OR_PROGRAM")
@click.option("--devset", type=click.Path(dir_okay=False), help="JSONL or CSV devset. Optional for a built-in "
              "pipeline (its bundled dataset is used).")
@click.option("--pipeline", help="The pipeline a saved program belongs to. Default: the one pipec compile "
              "recorded in the program.")
@click.option("--lm", envvar="PIPEC_LM", default=None, help=_LM_HELP)
@click.option("--judge-lm", envvar="PIPEC_JUDGE_LM", default=None, help=_JUDGE_LM_HELP)
@click.option("--api-base", envvar="PIPEC_API_BASE", help="Base URL of an OpenAI-compatible server.")
@click.option("--threads", type=click.IntRange(1, 256), help="Evaluation threads. Default: 1 for the local "
              "LM, 8 otherwise.")
@click.option("--experiment", envvar="PIPEC_EXPERIMENT", default="pipec", show_default=True,
              help="MLflow experiment name.")
@click.option("--no-cache", is_flag=True, help="Bypass DSPy's LM response cache.")
@click.option("--repeats", type=click.IntRange(1, 100), default=1, show_default=True, help=_REPEATS_HELP)
@click.option("--temperature", type=click.FloatRange(0.0, 2.0), help=_TEMPERATURE_HELP)
@click.option("--no-preflight", is_flag=True, help=_PREFLIGHT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def evaluate_cmd(target: str, devset: str | None, pipeline: str | None, lm: str | None, judge_lm: str | None,
                 api_base: str | None, threads: int | None, experiment: str, no_cache: bool, repeats: int,
                 temperature: float | None, as_json: bool, no_preflight: bool = False) -> None:
    """Evaluate PIPELINE_OR_PROGRAM per node: a pipeline (triage, sql, path/to/file.py:ClassName) or a
    compiled program (the .json file pipec compile saved).

    Every node's validators judge every example; classifier nodes also get per-label precision,
    recall and F1. The run is recorded in MLflow (tag pipec.kind=evaluate) with a verdicts table
    that shows why each example failed.
    """
    from experiments.evaluate_run import EvaluateOptions, evaluate_pipeline, evaluation_table

    opts = EvaluateOptions(target=target, devset=devset, pipeline=pipeline, lm=lm, judge_lm=judge_lm,
                           api_base=api_base, threads=threads, experiment=experiment, cache=not no_cache,
                           repeats=repeats, temperature=temperature, preflight=not no_preflight)
    result = _run(lambda: evaluate_pipeline(opts, say=_say))
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False))
        return
    console = _console()
    for renderable in evaluation_table(result):
        console.print(renderable)
    if result.get("repeats"):
        console.print(_repeats_table(result["repeats"]))
    if result["run_id"]:
        console.print(f"MLflow run: {result['run_id']} in {result['tracking_uri']}")


@cli.command("run")
@click.argument("target", metavar="PROGRAM")
@click.option("--input", "-i", "input_path", default="-", show_default=True, metavar="FILE",
              help="JSONL: one JSON object per line with the pipeline's inputs (gold fields, when present, "
              "feed the checks that need them). '-' reads stdin.")
@click.option("--pipeline", help="The pipeline a saved program belongs to. Default: the one pipec compile "
              "recorded in the program.")
@click.option("--store", envvar="PIPEC_STORE", help="The flywheel store (DuckDB file). Default: $PIPEC_STORE, "
              "else $PIPEC_HOME/store.duckdb.")
@click.option("--guard", "guards", multiple=True, metavar="NAME[=VALUE][:flag]",
              help="An input guard run before each call; repeatable. NAME: not_empty, max_length=CHARS, pii, "
              "prompt_injection, language=en,ja. A blocked input is recorded and not sent to the LM; ':flag' "
              "records without blocking.")
@click.option("--live-demos/--no-live-demos", default=None,
              help="Give each node demos from the store's corrected and approved calls, read before every call "
              "(a correction is a demo for the very next similar call). Default: on when the program was "
              "compiled with --optimizer knn --param pool=store.")
@click.option("--half-life", "half_life", type=click.FloatRange(min=0), default=30.0, show_default=True,
              metavar="DAYS", help="Recency half-life of live demos: a correction this old weighs half as much as "
              "a new one (0: no decay).")
@click.option("--no-judges", is_flag=True, help="Skip the LLM judges (writer 'rubric' rules); rule checks still run.")
@click.option("--lm", envvar="PIPEC_LM", default=None, help=_LM_HELP)
@click.option("--judge-lm", envvar="PIPEC_JUDGE_LM", default=None, help=_JUDGE_LM_HELP)
@click.option("--api-base", envvar="PIPEC_API_BASE", help="Base URL of an OpenAI-compatible server.")
@click.option("--no-cache", is_flag=True, help="Bypass DSPy's LM response cache.")
@click.option("--json", "as_json", is_flag=True, help="Each output line holds the whole trace: its id, outputs, "
              "error, the guards' verdicts, and each node call's output and demos.")
def run_cmd(target: str, input_path: str, pipeline: str | None, store: str | None, guards: tuple[str, ...],
            live_demos: bool | None, half_life: float, no_judges: bool, lm: str | None, judge_lm: str | None,
            api_base: str | None, no_cache: bool, as_json: bool) -> None:
    """Run PROGRAM on JSONL inputs and record every call in the flywheel store.

    PROGRAM is a compiled program (the .json file pipec compile saved) or a pipeline (triage, sql,
    path/to/file.py:ClassName). Prints one JSON line per input: the outputs (and "error" when the
    call failed or a guard rejected it). Every call's node calls, the guards' and the rule checks'
    verdicts are appended to the store in batches; LLM judges run in the background and add theirs.
    """
    from experiments.recording import RunOptions, run_program

    stdout = sys.stdout  # _run sends the job's chatter to stderr; the records go here

    def emit(record: dict[str, Any]) -> None:
        stdout.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        stdout.flush()

    opts = RunOptions(target=target, input=input_path, pipeline=pipeline, store=store, guards=guards, lm=lm,
                      api_base=api_base, judge_lm=judge_lm, judges=not no_judges, cache=not no_cache,
                      live_demos=live_demos, half_life_days=half_life or None, detail=as_json)
    _run(lambda: run_program(opts, emit, say=_say))


@cli.command("optimizers")
def optimizers_cmd() -> None:
    """List the optimizers and pipec's default settings for each."""
    from optimizers.registry import OPTIMIZERS

    for name, spec in OPTIMIZERS.items():
        defaults = ", ".join(f"{k}={v}" for k, v in spec.defaults.items()) or "none"
        click.echo(f"{name:14} {spec.summary}\n{'':14} defaults: {defaults}")


@cli.group()
def runs() -> None:
    """Tracked compile runs."""


@runs.command("list")
@click.option("--experiment", envvar="PIPEC_EXPERIMENT", default="pipec", show_default=True,
              help="MLflow experiment name.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--pipeline", help="Only runs of this pipeline (as given to pipec compile).")
@click.option("--optimizer", "-o", help="Only runs of this optimizer.")
@click.option("--status", type=click.Choice(["RUNNING", "FINISHED", "FAILED", "KILLED"], case_sensitive=False),
              help="Only runs in this state.")
@click.option("--since", metavar="WHEN", help="Only runs started since WHEN: a date (2026-11-25), a UTC time "
              "(2026-11-25T14:00) or an age (30m, 12h, 3d, 2w).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def runs_list(experiment: str, limit: int, pipeline: str | None, optimizer: str | None, status: str | None,
              since: str | None, as_json: bool) -> None:
    """List compile runs, newest first, with their baseline and compiled scores and cost in US
    dollars (LiteLLM's price map; the embedded LM costs 0; "unknown" for a model without a price)."""
    from experiments.runs import list_runs, parse_since

    rows = _run(lambda: list_runs(experiment, limit, pipeline=pipeline, optimizer=optimizer, status=status,
                                  since=parse_since(since) if since else None))
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    from rich.table import Table

    table = Table(title=f"experiment {experiment}")
    for column in ("run_id", "start", "status", "pipeline", "optimizer", "lm", "baseline", "compiled", "cost $"):
        table.add_column(column, justify="right" if column in ("baseline", "compiled", "cost $") else "left")
    for r in rows:
        fmt = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
        cost = ("unknown" if r.get("cost_unpriced") else "") if r.get("cost_usd") is None else f"{r['cost_usd']:.4f}"
        table.add_row(r["run_id"], r["start_time"], r["status"], r["pipeline"] or "", r["optimizer"] or "",
                      r["lm"] or "", fmt(r["baseline_score"]), fmt(r["compiled_score"]), cost)
    _console().print(table)
    if not rows:
        click.echo("No compile runs match." if pipeline or optimizer or status or since
                   else "No compile runs yet: try `pipec demo`.")


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def runs_show(run_id: str, as_json: bool) -> None:
    """Show RUN_ID: settings, scores per node, cost per phase, datasets, prompts, models, artifacts."""
    from experiments.runs import show_run

    run = _run(lambda: show_run(run_id))
    if as_json:
        click.echo(json.dumps(run, ensure_ascii=False))
        return
    from rich.table import Table

    console = _console()
    console.print(f"[bold]{run['run_name']}[/bold] {run['run_id']} · {run['kind'] or 'run'} · {run['status']} · "
                  f"started {run['start_time']} UTC")
    console.print(f"pipeline {run['pipeline']} · optimizer {run['optimizer']} · LM {run['lm']}")
    cost = run["cost"]
    usd = "unknown" if cost["usd"] is None else f"${cost['usd']:.4f}"
    phases = ", ".join(f"{k} ${v:.4f}" for k, v in sorted(cost["phases"].items()))
    console.print(f"cost {usd}" + (f" ({phases})" if phases else "")
                  + (f"; no price for {cost['unpriced']}" if cost["unpriced"] else ""))
    scores = Table(title="scores")
    stages = list(run["scores"])
    scores.add_column("")
    for stage in stages:
        scores.add_column(stage, justify="right")
    nodes = sorted({n for entry in run["scores"].values() for n in entry["nodes"]})
    scores.add_row("pipeline", *(f"{run['scores'][s]['score']:.3f}" for s in stages))
    for node in nodes:
        scores.add_row(f"  node {node}", *(("" if (v := run["scores"][s]["nodes"].get(node)) is None else f"{v:.3f}")
                                          for s in stages))
    console.print(scores)
    for label, items in (("datasets", [f"{d['name']} ({d['context']}, digest {d['digest']})" for d in run["datasets"]]),
                         ("prompts", [f"{p.get('name')} v{p.get('version')}" for p in run["prompts"]]),
                         ("models", [f"{m['name']} {m['uri']}" for m in run["models"]]),
                         ("artifacts", run["artifacts"])):
        console.print(f"{label}: " + (", ".join(items) if items else "none"))


@runs.command("compare")
@click.argument("run_a")
@click.argument("run_b")
@click.option("--stage", help="Which per-example results to compare: compiled, baseline or evaluate. Default: "
              "compiled when the runs have them, else evaluate.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap interval.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False), help="Also write the report as HTML here.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def runs_compare(run_a: str, run_b: str, stage: str | None, seed: int, html_file: str | None, as_json: bool) -> None:
    """Compare RUN_B against RUN_A node by node.

    Per node: the instruction diff, demos added and removed, and the score delta with a paired
    bootstrap 95% interval; per example (matched by input): win, loss or tie, with both outputs
    and verdicts, regressions first. The HTML report is also logged on RUN_B (compare/vs-RUN_A.html)
    so it opens in the MLflow UI.
    """
    from experiments.compare import compare_html, compare_runs, log_compare_html

    result = _run(lambda: compare_runs(run_a, run_b, stage=stage, seed=seed))
    page = compare_html(result)
    if html_file:
        with open(html_file, "w", encoding="utf-8") as out:
            out.write(page)
    try:
        result["html_artifact"] = log_compare_html(result, page)
    except Exception as exc:  # telemetry: the comparison itself is done
        _say(f"could not log the HTML report on run {run_b}: {type(exc).__name__}: {exc}")
        result["html_artifact"] = None
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False))
        return
    _print_comparison(result)


def _print_comparison(result: dict[str, Any]) -> None:
    from rich.table import Table

    console = _console()
    a, b, counts = result["runs"]["a"], result["runs"]["b"], result["counts"]
    table = Table(title=f"{a['run_name']} (A) → {b['run_name']} (B), {counts['paired']} examples paired by input")
    for column in ("", "A", "B", "Δ", f"{result['level']:.0%} interval", "wins", "losses", "ties"):
        table.add_column(column, justify="left" if not column else "right")

    def num(v: float | None, signed: bool = False) -> str:
        return "–" if v is None else f"{v:+.3f}" if signed else f"{v:.3f}"

    rows = [("pipeline", {**result["overall"], **{k: counts[k] for k in ("win", "loss", "tie")}}),
            *((f"  node {n}", d) for n, d in result["nodes"].items())]
    for label, d in rows:
        interval = "–" if d["low"] is None else f"[{d['low']:+.3f}, {d['high']:+.3f}]"
        table.add_row(label, num(d["a"]), num(d["b"]), num(d["delta"], True), interval,
                      str(d.get("win", "")), str(d.get("loss", "")), str(d.get("tie", "")))
    console.print(table)
    for node, diff in result["prompts"].items():
        changed = "changed" if diff["instructions"]["changed"] else "unchanged"
        demos = diff["demos"]
        console.print(f"node {node}: instructions {changed}; demos {demos['a']} → {demos['b']} "
                      f"(+{len(demos['added'])} −{len(demos['removed'])})")
        for line in diff["instructions"]["diff"][2:]:
            console.print(f"    {line}", markup=False)
    losses = [e for e in result["examples"] if e["outcome"] == "loss"]
    for example in losses[:10]:
        console.print(f"[red]regression[/red] {json.dumps(example['inputs'], ensure_ascii=False)[:100]}: "
                      f"{num(example['a']['score'])} → {num(example['b']['score'])}")
    if len(losses) > 10:
        console.print(f"… and {len(losses) - 10} more regressions (--json or --html for all)")
    if result.get("html_artifact"):
        console.print(f"HTML report logged on run {b['run_id']}: {result['html_artifact']}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=5000, show_default=True)
def ui(host: str, port: int) -> None:
    """Start the MLflow UI on the same tracking store pipec writes to."""
    from experiments.liveness import mark_killed_runs
    from experiments.tracking import tracking_uri

    uri = tracking_uri()
    _run(lambda: mark_killed_runs("pipec ui"))  # killed runs show as KILLED; a bad tracking URI is one line
    mlflow_bin = shutil.which("mlflow") or os.path.join(os.path.dirname(sys.executable), "mlflow")
    _say(f"MLflow UI for {uri} on http://{host}:{port} (Ctrl-C to stop)")
    os.execv(mlflow_bin, [mlflow_bin, "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)])


@cli.command("bench")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
def bench(name: str, as_json: bool) -> None:
    """Run benchmark NAME: overhead, parallel, cache, local-lm, quality, intents77, restaurants,
    recording or store.

    Writes benchmarks/results/NAME.json (figures, date, machine, versions) and NAME.md (the table).
    """
    from benchmarks import BENCHMARKS, run_benchmark

    if name not in BENCHMARKS:
        raise click.UsageError(f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHMARKS)}")
    result = _run(lambda: run_benchmark(name))
    table = result.pop("table")
    click.echo(json.dumps({"benchmark": name, **result}, ensure_ascii=False, default=str) if as_json else table)


_STORE_HELP = "The flywheel store (DuckDB file). Default: $PIPEC_STORE, else $PIPEC_HOME/store.duckdb."


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


@cli.command("stats")
@click.option("--store", envvar="PIPEC_STORE", metavar="PATH", help=_STORE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: the store's row counts and each "
              "view's rows.")
def stats(store: str | None, as_json: bool) -> None:
    """Show what the flywheel store says about the recorded calls.

    \b
    Views (SQL inside the store; `duckdb STORE "SELECT * FROM node_latency"` reads them too):
      pass_rate_daily            pass rate per node per day, per verdict source
      error_accumulation         per node: calls that failed, and traces whose first failure it was
      node_latency               p50/p95/mean seconds and tokens per node call
      judge_human_agreement      judge verdicts vs human labels on the same call and validator
      judge_agreement            per judge rubric and day: accuracy and Cohen's kappa vs humans
      judge_human_disagreements  the latest of those that disagree

    Opens the store read-only; a process writing to it makes this wait briefly, then exit 2.
    """
    from experiments.store import STATS_VIEWS, Store, store_stats

    def read() -> dict[str, Any]:
        with Store.open(store, read_only=True) as opened:
            return store_stats(opened)

    found = _run(read)
    if as_json:
        click.echo(json.dumps(found, ensure_ascii=False, default=str))
        return
    from rich.table import Table

    console = _console()
    state = found["store"]
    console.print(f"Store {state['path']} (schema v{state['schema_version']}): {state['traces']} traces, "
                  f"{state['node_calls']} node calls, {state['verdicts']} verdicts, {state['labels']} labels, "
                  f"{state['corrections']} corrections")
    for view, title, _, _ in STATS_VIEWS:
        rows = found[view]
        if not rows:
            console.print(f"[bold]{title}[/bold] [dim]({view}): no rows yet[/dim]")
            continue
        table = Table(title=f"{title} ({view})", title_justify="left")
        for column in rows[0]:
            header = column.replace("_seconds", "_s").replace("_prompt_tokens", "_in_tok")
            header = header.replace("_completion_tokens", "_out_tok")  # keeps the latency table narrow
            table.add_column(header, justify="right" if isinstance(rows[0][column], int | float) else "left",
                             overflow="fold")
        for row in rows:
            table.add_row(*(_cell(v) for v in row.values()))
        console.print(table)


@cli.command("export")
@click.option("--store", envvar="PIPEC_STORE", metavar="PATH", help=_STORE_HELP)
@click.option("--approved", is_flag=True, help="Only traces a human approved (a passing label) or corrected, for "
              "--node, else for every node with a gold field.")
@click.option("--node", metavar="NAME", help="Only traces with a call of node NAME (with --approved: an approved "
              "call).")
@click.option("--pipeline", metavar="P", help="Only traces of pipeline P (as recorded: triage, sql, "
              "path/to/file.py:Class); its declaration names the input and gold fields.")
def export_cmd(store: str | None, approved: bool, node: str | None, pipeline: str | None) -> None:
    """Write the store's traces as a trainset: one JSON line per trace on stdout.

    Each line holds the pipeline's input fields and, per node, its gold field: the corrected output
    when a human corrected the call, else the approved output, else (without --approved) what the
    node produced when no check or human label failed it; a trace missing a gold value is left
    out. Lines load with `pipec compile --trainset FILE`; `--trainset store:approved,node=NAME`
    reads the same rows without a file.

    \b
      pipec export --approved --pipeline triage > trainset.jsonl
      pipec compile triage -o bootstrap --trainset trainset.jsonl
    """
    from experiments.store import Store, StoreFilter, export_rows

    def read() -> list[dict[str, Any]]:
        declared = None
        if pipeline:
            from programs.loader import make_pipeline

            declared = make_pipeline(pipeline)
        with Store.open(store, read_only=True) as opened:
            return export_rows(opened, StoreFilter(approved=approved, node=node, pipeline=pipeline),
                               pipeline=declared)

    rows = _run(read)
    click.echo("".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows), nl=False)
    _say(f"exported {len(rows)} trace(s)" + ("" if rows else ": none matched (try without --approved, or "
                                                           "label and correct calls first)"))


cli.add_command(review_cmd)  # pipec review (experiments/review_cli.py)
cli.add_command(judge_group)  # pipec judge align


def main() -> None:
    """Console-script entry point; user errors exit with status 2."""
    cli(prog_name="pipec")
