"""``pipec review`` and ``pipec judge``: the human review page and the judge's alignment with people.

Registered on the main ``pipec`` group by :mod:`experiments.cli`.
"""

from __future__ import annotations

import getpass
import json
from typing import Any

import click

__all__ = ["judge", "review_cmd"]

_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
_STORE_HELP = "The flywheel store (DuckDB file). Default: $PIPEC_STORE, else $PIPEC_HOME/store.duckdb."


def _cli() -> Any:
    from experiments import cli

    return cli


def _store_path(store: str | None) -> Any:
    from experiments.store import default_store_path

    path = default_store_path(store)
    if not path.exists():
        raise click.UsageError(f"no store at {path}: record calls first (pipec run), or point --store / "
                               "$PIPEC_STORE at one")
    return path


def _default_reviewer() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (some containers)
        return ""


@click.command("review")
@click.option("--store", envvar="PIPEC_STORE", help=_STORE_HELP)
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="The port (0: any free one; the address is printed).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on. Anything but 127.0.0.1/localhost needs --allow-remote.")
@click.option("--allow-remote", is_flag=True,
              help="Allow --host to be reachable from other machines: anyone who reaches the port can read the "
                   "store's traces and write labels. There is no login.")
@click.option("--reviewer", envvar="PIPEC_REVIEWER",
              help="Your name, saved with every label and correction. Default: $PIPEC_REVIEWER, else your login "
                   "name; the page lets you change it.")
def review_cmd(store: str | None, port: int, host: str, allow_remote: bool, reviewer: str | None) -> None:
    """Review recorded pipeline calls in the browser: pass/fail, comments, corrected outputs.

    \b
    The queue puts first the node calls where the LLM judge and a human disagree, then
    unreviewed traces with the lowest validator score, then the newest. Every item shows the
    whole trace (each step's inputs, output and verdicts), so you see which step went wrong
    first. Keys on the page: p pass, f fail, n next, j/k next/previous step, 1-5 a score
    where the rubric is graded. Labels and corrections go to the store, with your name and the
    time; corrected node calls feed the next run's retrieved demos and the next compile.

    The page opens the store only for the moment of each request, so `pipec run` can write to
    it between reviews.
    """
    from experiments.review_page import make_server
    from experiments.store import Store

    if host not in _LOCAL_HOSTS and not allow_remote:
        raise click.UsageError(f"--host {host} would make the review page (which reads traces and writes labels, "
                               "with no login) reachable from other machines; add --allow-remote if you mean it")
    path = _store_path(store)
    name = (reviewer or "").strip() or _default_reviewer()
    try:
        server = make_server(lambda read_only: Store.open(path, read_only=read_only), host=host, port=port,
                             reviewer=name, reviewer_fixed=bool(reviewer), store_label=str(path))
    except OSError as exc:
        raise click.UsageError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port") \
            from exc
    say = _cli()._say
    if host not in _LOCAL_HOSTS:
        say(f"[bold red]listening on {host}: anyone who can reach port {server.server_address[1]} can read "
            "this store and write labels[/]")
    say(f"review page: {server.url}/ (store {path}; Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@click.group("judge")
def judge() -> None:
    """The LLM judge against people: agreement (in `pipec stats`) and alignment on human labels."""


@judge.command("align")
@click.option("--store", envvar="PIPEC_STORE", help=_STORE_HELP)
@click.option("--rubric", help="The judge rubric's validator name (judge:…, as `pipec stats` lists it). "
              "Default: the only rubric with human labels.")
@click.option("--pipeline", help="The pipeline that declares the rubric (built-in name or path/to/file.py:Class). "
              "Default: the pipeline of the labelled traces.")
@click.option("--optimizer", "-o", default="labeled", show_default=True,
              help="How to compile the judge: an optimizer of `pipec optimizers` run on the judge's DSPy module "
                   "(labeled, bootstrap, bootstrap-rs, mipro, ...), or 'dynamic': per-call demos from the "
                   "training labels, nearest by input, recent and disagreeing first.")
@click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE", help="An optimizer setting; repeatable.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the train/held-out split.")
@click.option("--holdout", type=click.FloatRange(0.1, 0.9), default=0.4, show_default=True,
              help="The share of labels held out to measure on (never shown to the optimizer).")
@click.option("--judge-lm", "--lm", "judge_lm", envvar="PIPEC_JUDGE_LM", default=None,
              help="The judge's LM ('local' or a LiteLLM model string). Default: $PIPEC_JUDGE_LM, else $PIPEC_LM, "
                   "else local.")
@click.option("--api-base", envvar="PIPEC_API_BASE", help="Base URL of an OpenAI-compatible server.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the aligned judge's demos as JSONL (usable "
              "as the node's judge_examples rule).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def judge_align(store: str | None, rubric: str | None, pipeline: str | None, optimizer: str, params: tuple[str, ...],
                seed: int, holdout: float, judge_lm: str | None, api_base: str | None, out: str | None,
                as_json: bool) -> None:
    """Compile the LLM judge on human labels; print accuracy and Cohen's kappa before and after,
    measured on held-out labels it did not see (a seeded split)."""
    from experiments.alignment import AlignOptions, run_align

    cli = _cli()
    opts = AlignOptions(store=_store_path(store), rubric=rubric, pipeline=pipeline, optimizer=optimizer,
                        params=params, seed=seed, holdout=holdout, judge_lm=judge_lm, api_base=api_base, out=out)
    result = cli._run(lambda: run_align(opts, say=cli._say))
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False, default=str))
        return

    def fmt(value: Any) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    click.echo(f"judge {result['validator']} · {result['optimizer']} · {result['n_train']} training labels, "
               f"{result['n_test']} held out (seed {result['seed']})")
    for when in ("before", "after"):
        row = result[when]
        click.echo(f"  {when:6}  kappa {fmt(row['kappa'])}  accuracy {fmt(row['accuracy'])}  "
                   f"(n={row['n']}{', ungraded ' + str(row['ungraded']) if row['ungraded'] else ''})")
    if result.get("out"):
        click.echo(f"demos: {result['out']}")
