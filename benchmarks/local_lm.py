"""The embedded LM through pipec versus llama-cpp-python called directly, in one process.

pipec's contender calls the intent classifier node with ``experiments.lm.make_lm("local",
cache=False)`` inside ``dspy.context`` with its JSONAdapter: DSPy formats the prompt, the
engine builds the JSON-schema grammar and calls llama.cpp, DSPy parses the answer. The direct
contender calls ``llama_cpp.Llama(...).create_chat_completion`` on its own model instance with
the very messages, grammar and settings pipec sent (recorded during the warm-up), so the two do
the same model work and differ only by what pipec and DSPy add around it. They alternate call
by call over the same messages; the ratio of their total (per-message median) times is reported.

Run: ``pipec bench local-lm`` or ``python -m benchmarks.local_lm``.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from typing import Any

import dspy

from benchmarks import banking77
from benchmarks.harness import RATIO_NOTE, fresh_dspy_cache, markdown_table, median

__all__ = ["run"]

MESSAGES = 24
ROUNDS = 4


@contextmanager
def _recording(engine: Any, calls: list[dict[str, Any]]) -> Any:
    """Records what pipec hands llama.cpp (messages and settings) and the schema it came from."""
    from llama_cpp import Llama

    from experiments.local_lm import _schema_of

    original_complete, original_chat = engine.complete, Llama.create_chat_completion

    def complete(request: Any) -> Any:
        calls.append({"schema": _schema_of(request.config.response_format)})
        return original_complete(request)

    def chat(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls[-1].update({"messages": kwargs["messages"],
                          "settings": {k: v for k, v in kwargs.items() if k not in ("messages", "grammar")}})
        return original_chat(self, *args, **kwargs)

    engine.complete = complete
    Llama.create_chat_completion = chat
    try:
        yield
    finally:
        del engine.complete
        Llama.create_chat_completion = original_chat


def run(rounds: int = ROUNDS, messages: int = MESSAGES) -> dict[str, Any]:
    """Times ``messages`` classifier calls per contender, ``rounds`` times, alternating call by call.

    Each message is sent by both contenders back to back (pipec first on even messages, direct
    first on odd ones), so a slow spell of the shared machine hits both alike; per message the
    median over rounds is kept.

    Returns:
        ``ratio`` (pipec/direct), ``ms_per_call`` and ``tokens_per_s`` (pipec's), the direct
        contender's figures, and ``table`` (Markdown).
    """
    from llama_cpp import Llama, LlamaGrammar

    from experiments.evaluate import lm_usage
    from experiments.lm import make_lm

    _, dev, _ = banking77.load_split()
    texts = [e.text for e in dev[:messages]]
    config = make_lm("local", cache=False)
    engine = config.engine
    node = banking77.IntentPipeline().intent
    recorded: list[dict[str, Any]] = []
    seconds: dict[str, list[list[float]]] = {"pipec": [[] for _ in texts], "direct": [[] for _ in texts]}
    tokens: dict[str, list[list[int]]] = {"pipec": [[] for _ in texts], "direct": [[] for _ in texts]}
    same = []

    with fresh_dspy_cache(None), dspy.context(lm=config.lm, adapter=config.adapter):
        with _recording(engine, recorded):  # the warm-up: loads the model, records pipec's requests
            warm = [node(text=t).label for t in texts]
        direct_llama = Llama(model_path=engine.model_path, n_ctx=engine.n_ctx, n_threads=engine.n_threads,
                             n_threads_batch=engine.n_threads, verbose=False, seed=0)
        grammars: dict[str, Any] = {}
        for call in recorded:
            key = json.dumps(call["schema"], sort_keys=True)
            grammars.setdefault(key, LlamaGrammar.from_json_schema(key, verbose=False))
            call["grammar"] = grammars[key]

        def pipec(i: int) -> None:
            with lm_usage() as usage:
                label = node(text=texts[i]).label
            tokens["pipec"][i].append(usage.completion_tokens)
            same.append(label == warm[i])

        def direct(i: int) -> None:
            call = recorded[i]
            out = direct_llama.create_chat_completion(messages=call["messages"], grammar=call["grammar"],
                                                      **call["settings"])
            tokens["direct"][i].append(out["usage"]["completion_tokens"])
            same.append(json.loads(out["choices"][0]["message"]["content"]).get("label") == warm[i])

        for i in range(len(texts)):  # the direct contender's warm-up
            direct(i)
        same.clear()
        for _ in range(rounds):
            for i in range(len(texts)):
                order = (("pipec", pipec), ("direct", direct)) if i % 2 == 0 else (("direct", direct), ("pipec", pipec))
                for name, fn in order:
                    start = time.perf_counter()
                    fn(i)
                    seconds[name][i].append(time.perf_counter() - start)
        direct_llama.close()
    n = len(texts)
    per_message = {name: [median(runs) for runs in seconds[name]] for name in seconds}
    total = {name: sum(values) for name, values in per_message.items()}
    completion = {name: sum(median(t) for t in tokens[name]) for name in tokens}
    figures = {
        "ratio": total["pipec"] / total["direct"],
        "ms_per_call": 1000 * total["pipec"] / n,
        "tokens_per_s": completion["pipec"] / total["pipec"],
        "direct": {"ms_per_call": 1000 * total["direct"] / n, "tokens_per_s": completion["direct"] / total["direct"]},
        "added_ms_per_call": 1000 * (total["pipec"] - total["direct"]) / n,
        "completion_tokens_per_call": completion["pipec"] / n,
        "same_answers": sum(same) / len(same) if same else None,
        "per_message_ms": {name: [round(1000 * v, 1) for v in values] for name, values in per_message.items()},
    }
    table = markdown_table(
        ["contender", "ms/call", "completion tokens/s", "ratio to direct"],
        [["pipec (make_lm('local') + JSONAdapter + node)", figures["ms_per_call"], figures["tokens_per_s"],
          figures["ratio"]],
         ["llama-cpp-python direct", figures["direct"]["ms_per_call"], figures["direct"]["tokens_per_s"], 1.0]])
    return {
        **figures,
        "settings": {"model": engine.model_id, "model_file": engine.settings()["model_file"],
                     "n_threads": engine.n_threads, "n_ctx": engine.n_ctx, "messages": n, "rounds": rounds,
                     "node": "benchmarks.banking77.IntentPipeline().intent (classifier, 6 labels)",
                     "dspy_cache": "off",
                     "order": "one warm-up pass each, then per message both contenders back to back, the order "
                              "swapped every message; per message the median over rounds",
                     "tokens_per_s": "completion tokens per second of wall time, prompt processing included"},
        "note": RATIO_NOTE,
        "table": table,
    }


if __name__ == "__main__":
    from benchmarks import main

    main("local-lm")
