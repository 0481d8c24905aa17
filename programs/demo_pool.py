"""A node's live demo pool: reviewed node calls that become demos while the program runs.

The data flywheel's dynamic few-shot. A ``DemoSource`` hands out reviewed node calls (a human's
correction, or an approved output) as they arrive; a ``LivePool`` keeps them embedded in an
in-memory matrix and, before each selection, asks the source for the rows added since its
cursor and embeds only those. A correction saved now is retrievable by the very next call: no
recompile, no rebuild of the index.

Which demos a call gets: the pool rows most similar to the call's inputs (cosine similarity of
the node's embedding), each similarity weighted by recency, ``0.5 ** (age / half_life)``: with
the default half-life of 30 days, a row reviewed a month ago counts half as much as one reviewed
now. When the node also has a compiled retrieval pool (``--optimizer knn``), both pools compete
on the same embedding and the best ``k`` win (trainset rows are not aged); otherwise the live
demos follow the node's fixed demos.

This module knows no storage: ``experiments`` implements ``DemoSource`` over the DuckDB store
and attaches a pool to each node at run time (``node.live_pool``). A source that is also a
``VectorCache`` keeps the vectors a pool computed: a batch of ``CACHE_MIN_ROWS`` or more rows
(the first refresh of a process) reads the stored ones and embeds only the rest, then stores
those, so a pool over 100,000 reviewed calls is embedded once, not at every start. Small batches
(the few rows added between two calls) are embedded directly: reading the cache would cost more.

Example:
    >>> source = ListSource([PoolRow("c1", {"text": "my card never came", "label": "card_arrival"}, 0.0)])
    >>> pool = LivePool(source, query_fields=("text",), k=1, clock=lambda: 0.0)
    >>> [d["label"] for d in pool.select({"text": "my new card never came"})]
    ['card_arrival']
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from programs.errors import ConfigError
from programs.retrieval import ORDERS, Retrieval, _normalise, query_text, resolve_embedding

__all__ = ["CACHE_MIN_ROWS", "DEFAULT_HALF_LIFE_DAYS", "DemoSource", "ListSource", "LivePool", "PoolRow",
           "VectorCache", "text_digest"]

DEFAULT_HALF_LIFE_DAYS = 30.0
"""A reviewed row this many days old weighs half as much as one reviewed now."""

logger = logging.getLogger(__name__)

CACHE_MIN_ROWS = 64
"""A refresh of at least this many rows reads and fills the source's vector cache (``VectorCache``)."""

_RANK = {"correction": 2, "approved": 1}  # a correction wins over an approval of the same call
_DAY = 86_400.0


@dataclass(frozen=True)
class PoolRow:
    """One reviewed node call, as a demo.

    Attributes:
        key: The node call's identity; a later row with the same key replaces the earlier one,
            except that an approval never replaces a correction.
        demo: The node's fields: its inputs and its (corrected or approved) output. None
            withdraws the key from the pool.
        created_at: When it was reviewed, in seconds since the epoch (recency weighting).
        kind: ``correction`` or ``approved``.
    """

    key: str
    demo: Mapping[str, Any] | None
    created_at: float
    kind: str = "correction"


@runtime_checkable
class DemoSource(Protocol):
    """Where a live pool's rows come from.

    ``demos_since(cursor)`` returns the rows added since ``cursor`` (None: every row) and the new
    cursor. It is called before every selection, so it must be cheap when nothing is new.
    """

    def demos_since(self, cursor: Any) -> tuple[Sequence[PoolRow], Any]: ...


@runtime_checkable
class VectorCache(Protocol):
    """Vectors a pool computed, kept by the source: raw embedding output (before IDF weights and
    normalisation), keyed by ``(row key, text_digest(text))`` per embedding name."""

    def cached_vectors(self, embedding: str, keys: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, matrix)``: ``matrix[rows[i]]`` is the vector of ``keys[i]``; ``rows[i]`` -1: none stored."""
        ...

    def keep_vectors(self, embedding: str, keys: Sequence[tuple[str, str]], vectors: np.ndarray) -> None:
        """Keeps the raw vectors computed for ``keys``."""
        ...


def text_digest(text: str) -> str:
    """The key of an embedded text: a cached vector is reused only for the very same text."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


class ListSource:
    """An in-memory ``DemoSource`` (tests, or an application feeding its own reviews).

    Args:
        rows: The first rows.
    """

    def __init__(self, rows: Sequence[PoolRow] = ()) -> None:
        self._rows = list(rows)
        self._lock = threading.Lock()

    def add(self, *rows: PoolRow) -> None:
        """Appends rows; the next selection sees them."""
        with self._lock:
            self._rows.extend(rows)

    def demos_since(self, cursor: Any) -> tuple[Sequence[PoolRow], Any]:
        with self._lock:
            start = int(cursor or 0)
            return self._rows[start:], len(self._rows)


class LivePool:
    """Reviewed node calls, embedded incrementally, selected by similarity weighted by recency.

    Thread-safe: one lock covers a refresh and a selection.

    Args:
        source: Where the rows come from.
        query_fields: The node's input fields whose values, joined, are embedded.
        embedding: The embedding's name (``hash`` by default), used when ``embed`` is None.
        weights: Per-dimension weights applied before normalising (a compiled retrieval's IDF
            weights: ``for_node`` passes them, so both pools share one space).
        embed: ``texts -> unit float32 vectors``, instead of ``embedding`` and ``weights`` (no
            vector cache then: the pool cannot name what it computes).
        k: How many live demos a call gets at most.
        order: ``nearest_last`` or ``nearest_first``.
        half_life_days: Recency half-life; None or 0 turns the decay off.
        clock: Seconds since the epoch (tests pass a fixed one).
    """

    def __init__(self, source: DemoSource, query_fields: Sequence[str], *, embedding: str = "hash",
                 weights: np.ndarray | None = None, embed: Callable[[Sequence[str]], np.ndarray] | None = None,
                 k: int = 4,
                 order: str = "nearest_last", half_life_days: float | None = DEFAULT_HALF_LIFE_DAYS,
                 clock: Callable[[], float] = time.time) -> None:
        if k < 1:
            raise ConfigError(f"a live demo pool needs k >= 1, got {k}")
        if order not in ORDERS:
            raise ConfigError(f"unknown demo order {order!r}: choose one of {', '.join(ORDERS)}")
        if half_life_days is not None and not half_life_days >= 0:
            raise ConfigError(f"half_life_days must be >= 0, got {half_life_days}")
        self.source = source
        self.query_fields = tuple(query_fields)
        self.embedding = embedding
        self._custom = embed
        self._encode = None if embed is not None else resolve_embedding(embedding).encode
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float32)
        self._cache = source if embed is None and isinstance(source, VectorCache) else None
        self.k, self.order, self.clock = int(k), order, clock
        self.half_life_days = half_life_days or None
        self._lock = threading.Lock()
        self._cursor: Any = None
        # The matrix is stored transposed, (dim, capacity): a hashed n-gram query touches few
        # dimensions, and each one's row is contiguous, so a search reads those rows only.
        # Each column is the row's unit vector times its recency weight relative to ``_ref``:
        # rows age at the same rate, so the weights never change and a search does no decay work.
        self._vt = np.zeros((0, 0), dtype=np.float32)
        self._ref: float | None = None
        self._demos: list[dict[str, Any] | None] = []
        self._ranks: list[int] = []
        self._index: dict[str, int] = {}
        self._dead: list[int] = []
        self._size = 0
        self.embedded = 0  # rows embedded since the pool was made: each row once
        self.reused = 0  # rows whose vectors were read from the source's cache instead
        self._warned = False

    @classmethod
    def for_node(cls, node: Any, source: DemoSource, **settings: Any) -> LivePool:
        """A pool for ``node``: its retrieval's embedding, k and order when it has one."""
        retrieval: Retrieval | None = getattr(node, "retrieval", None)
        if retrieval is not None:
            settings = {"embedding": retrieval.embedding, "weights": retrieval.weights, "k": retrieval.k,
                        "order": retrieval.order, **settings}
            return cls(source, retrieval.query_fields, **settings)
        return cls(source, tuple(node.input_fields), **settings)

    def __deepcopy__(self, memo: dict[int, Any]) -> LivePool:
        return self  # a runtime resource (a source, a lock): program copies share it

    def __len__(self) -> int:
        return self._size - len(self._dead)

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit query vectors for ``texts``."""
        if self._custom is not None:
            return np.asarray(self._custom(list(texts)), dtype=np.float32)
        return self._finish(np.asarray(self._encode(list(texts)), dtype=np.float32))

    def _finish(self, raw: np.ndarray) -> np.ndarray:
        return _normalise(raw * self.weights if self.weights is not None else raw)

    def _row_vectors(self, keys: Sequence[str], texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of new rows: from the source's cache when the batch is large, the rest embedded."""
        cache = self._cache if len(texts) >= CACHE_MIN_ROWS else None
        if cache is None:
            self.embedded += len(texts)
            return self._embed(texts)
        digests = [(key, text_digest(text)) for key, text in zip(keys, texts, strict=True)]
        try:
            rows, stored = cache.cached_vectors(self.embedding, digests)
        except Exception as exc:  # a cache that fails costs time, never the call
            logger.warning("live demo pool: reading stored vectors failed (%s: %s); embedding every row",
                           type(exc).__name__, exc)
            rows, stored = np.full(len(texts), -1), np.zeros((0, 0), dtype=np.float32)
        missing = np.flatnonzero(rows < 0)
        if len(missing):
            computed = np.asarray(self._encode([texts[i] for i in missing]), dtype=np.float32)
            if len(missing) < len(texts) and computed.shape[1] != stored.shape[1]:
                # The stored vectors were made by another version of the embedding: embed them all.
                missing = np.arange(len(texts))
                computed = np.asarray(self._encode(list(texts)), dtype=np.float32)
            try:
                cache.keep_vectors(self.embedding, [digests[i] for i in missing], computed)
            except Exception as exc:
                logger.warning("live demo pool: storing %d vectors failed (%s: %s)", len(missing),
                               type(exc).__name__, exc)
            raw = np.empty((len(texts), computed.shape[1]), dtype=np.float32)
            raw[missing] = computed
        else:
            raw = np.empty((len(texts), stored.shape[1]), dtype=np.float32)
        found = np.flatnonzero(rows >= 0) if len(missing) < len(texts) else np.zeros(0, dtype=np.int64)
        if len(found):
            raw[found] = stored[rows[found]]
        self.embedded += len(missing)
        self.reused += len(found)
        logger.info("live demo pool: %d vectors read from the store, %d embedded", len(found), len(missing))
        return self._finish(raw)

    def refresh(self) -> int:
        """Takes in the rows added since the last refresh; returns how many were new."""
        with self._lock:
            return self._refresh()

    def _refresh(self) -> int:
        try:
            rows, cursor = self.source.demos_since(self._cursor)
        except Exception as exc:  # the pool helps a call; a source that fails must not fail the call
            if not self._warned:
                logger.warning("live demo pool: its source failed (%s: %s); the node keeps the demos it has",
                               type(exc).__name__, exc)
                self._warned = True
            return 0
        self._cursor = cursor
        if not rows:
            return 0
        pending: dict[str, tuple[int, PoolRow]] = {}  # by key: a batch may hold several words on one call
        for row in rows:
            rank = _RANK.get(row.kind, 1)
            held = pending[row.key][0] if row.key in pending else \
                self._ranks[self._index[row.key]] if row.key in self._index else None
            if held is not None and rank < held:
                continue  # an approval (or its withdrawal) never overrides a correction of the same call
            old = self._index.pop(row.key, None)
            if old is not None:
                self._dead.append(old)
                self._demos[old] = None
            pending.pop(row.key, None)
            if row.demo is None or not any(row.demo.get(f) is not None for f in self.query_fields):
                continue  # withdrawn, or nothing to match a query against
            pending[row.key] = (rank, row)
        fresh = list(pending.values())
        if not fresh:
            return 0
        vectors = self._row_vectors([r.key for _, r in fresh],
                                    [query_text(r.demo or {}, self.query_fields) for _, r in fresh])
        self._grow(len(fresh), vectors.shape[1])
        start = self._size
        times = np.array([float(row.created_at) for _, row in fresh], dtype=np.float64)
        self._vt[:, start:start + len(fresh)] = (vectors * self._weights(times)[:, None]).T
        for offset, (rank, row) in enumerate(fresh):
            i = start + offset
            self._demos[i] = dict(row.demo or {})
            self._ranks[i] = rank
            self._index[row.key] = i
        self._size += len(fresh)
        return len(fresh)

    def _weights(self, times: np.ndarray) -> np.ndarray:
        """Recency weights of rows made at ``times``, relative to the pool's reference time."""
        if not self.half_life_days:
            return np.ones(len(times), dtype=np.float32)
        if self._ref is None:
            self._ref = float(self.clock())
        exponents = (times - self._ref) / (_DAY * self.half_life_days)
        if exponents.size and exponents.max() > 60:  # far past the reference: move it, rescale once
            shift = float(exponents.max())
            self._vt[:, : self._size] *= np.float32(2.0 ** -shift)
            self._ref += shift * _DAY * self.half_life_days
            exponents -= shift
        return np.exp2(exponents).astype(np.float32)

    def _factor(self) -> float:
        """What turns a stored score into ``similarity x 0.5 ** (age / half_life)`` now."""
        if not self.half_life_days or self._ref is None:
            return 1.0
        return float(2.0 ** (-(self.clock() - self._ref) / (_DAY * self.half_life_days)))

    def _grow(self, extra: int, dim: int) -> None:
        """Room for ``extra`` more rows; capacity doubles, so appends are amortised O(1)."""
        needed = self._size + extra
        if self._vt.shape[0] not in (0, dim):
            raise ConfigError(f"the live pool's embedding changed dimension ({self._vt.shape[0]} -> {dim})")
        if needed <= self._vt.shape[1]:
            return
        capacity = max(needed, 2 * self._vt.shape[1], 64)
        vt = np.zeros((dim, capacity), dtype=np.float32)
        if self._size:
            vt[:, : self._size] = self._vt[:, : self._size]
        self._vt = vt
        self._demos.extend([None] * (capacity - len(self._demos)))
        self._ranks.extend([0] * (capacity - len(self._ranks)))

    def _scores(self, query: np.ndarray) -> np.ndarray:
        """Stored scores (similarity x recency weight) of every row; withdrawn rows -inf."""
        n = self._size
        used = np.flatnonzero(query)
        if 2 * len(used) < len(query):  # sparse (hashed n-grams): only the query's dimensions
            scores = np.zeros(n, dtype=np.float32)
            for d in used:
                scores += query[d] * self._vt[d, :n]
        else:
            scores = query @ self._vt[:, :n]
        if self._dead:
            scores[self._dead] = -np.inf
        return scores

    def nearest(self, query: np.ndarray, k: int | None = None) -> list[tuple[float, dict[str, Any]]]:
        """``(weighted score, demo)`` of the best ``k`` live rows for a unit query vector, best first."""
        with self._lock:
            self._refresh()
            return self._nearest(np.asarray(query, dtype=np.float32).reshape(-1), k or self.k)

    def _nearest(self, query: np.ndarray, k: int) -> list[tuple[float, dict[str, Any]]]:
        alive = len(self)
        if not alive:
            return []
        scores = self._scores(query)
        k = min(k, alive)
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        ranked = top[np.lexsort((top, -scores[top]))]  # ties broken by arrival, never by the partition
        factor = self._factor()
        return [(float(scores[i]) * factor, dict(self._demos[i] or {})) for i in ranked if np.isfinite(scores[i])]

    def select(self, inputs: Mapping[str, Any], *, base: Retrieval | None = None,
               fixed: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """The demos for one call with ``inputs``.

        Args:
            inputs: The call's input values.
            base: The node's compiled retrieval pool: its best rows compete with the live ones
                for the ``k`` places (same embedding).
            fixed: The node's fixed demos (no retrieval): they come first, the live demos after.
        """
        text = query_text(inputs, self.query_fields)
        query = np.asarray(self._embed([text]), dtype=np.float32)[0]
        with self._lock:
            self._refresh()
            live = self._nearest(query, self.k)
        if base is not None:
            # A trainset row that is also a reviewed call (--trainset store:approved) counts once: live.
            reviewed = {query_text(demo, self.query_fields) for _, demo in live}
            scored = [(float(base.vectors[i] @ query), dict(base.demos[i])) for i in base.nearest(query)
                      if query_text(base.demos[i], self.query_fields) not in reviewed] + live
            scored.sort(key=lambda pair: -pair[0])  # stable: a tie keeps the trainset row first
            demos = [demo for _, demo in scored[: base.k]]
        else:
            demos = [demo for _, demo in live]
        if self.order == "nearest_last":
            demos.reverse()
        return [*(() if base is not None else fixed), *demos]

