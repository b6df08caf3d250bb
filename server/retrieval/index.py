"""LanceDB-backed chunk index: one table per vector store, hybrid search.

Layout of a store's table (name derived from the store id):
``chunk_id`` ("<file_id>#<n>"), ``file_id``, ``filename``, ``chunk_index``,
``token_count``, ``text`` (with a native BM25 full-text index), ``vector``
(float32, L2-normalised, cosine distance), ``attributes`` (JSON, returned
as-is) and typed ``attr_*`` columns that filters compile against (see
``filters.py``). The schema metadata records the embedder, so a store built
with one model is never searched with another's vectors.

Why these choices:
* Vector search is exact, over an in-memory copy of the store's vectors
  (numpy matrix × query, cached per table, rebuilt after writes): a numpy
  scan of 100k×384 floats costs ~8 ms with recall 1.0, whereas LanceDB's own
  flat scan re-reads and decodes the vector column from disk on every query
  (~100-300 ms at 100k rows here, bench/bench_search.py) and IVF_PQ with
  default settings was measured at recall@10 = 0.16. The cache is bounded
  (``vector_cache_bytes``, LRU over stores); a store that does not fit is
  searched by LanceDB (flat, or the ANN index if ``ann`` settings are given
  and the table passes their row threshold).
* Filtered vector search uses the same cache: the rows matching the filter
  are found by a LanceDB scan of the (small) attribute columns, remembered
  per table generation and filter.
* Rows added after the FTS index was built are still found (LanceDB scans
  unindexed rows), but that scan tokenizes their text on every query
  (bench_search.py: 50 unindexed ~1 KB rows cost ~2.5 ms per query), while
  ``optimize()`` (compaction + folding rows into the index) costs ~0.5 s at
  10k rows and ~4.7 s at 100k. So a write folds them in only once more than
  ``fts_reindex_rows`` (default 256) are unindexed, and ``fold_pending``
  folds the rest when a store's ingestion queue drains (VectorStores calls
  it), so an idle store has none.
* All LanceDB and model calls block, so each public coroutine runs them in a
  worker thread; writes to one store are serialised by a per-store lock.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from .chunking import Chunk
from .embedding import Embedder
from .filters import (
    ATTRIBUTE_PREFIX,
    AttributeValue,
    FilterError,
    attribute_columns_for,
    compile_filter,
    sql_string,
    validate_attributes,
)
from .fusion import BM25_WEIGHT, HYBRID_DEPTH, VECTOR_WEIGHT, reciprocal_rank_fusion

__all__ = ["AnnSettings", "EmbedderMismatch", "FilterError", "SearchHit", "VectorIndex", "table_name_for"]

MODES = frozenset({"hybrid", "vector", "fts"})
RANKERS = frozenset({"auto", "default-2024-11-15", "default_2024_08_21", "default-2024-08-21", "none"})
MAX_RESULTS = 50
_META_EMBEDDER = b"threadlog.embedder"
_META_DIM = b"threadlog.dim"
_SCAN_THREADS = max(1, min(4, os.cpu_count() or 1))
_SCAN_BLOCK_MIN = 25_000  # rows per parallel block; below that one thread is faster
_RESULT_COLUMNS = ["chunk_id", "file_id", "filename", "chunk_index", "text", "attributes"]
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")


class EmbedderMismatch(RuntimeError):
    """The store was indexed with a different embedding model."""


@dataclass(frozen=True)
class SearchHit:
    file_id: str
    filename: str
    score: float
    content: str
    attributes: dict[str, str | float | bool]
    chunk_index: int


@dataclass(frozen=True)
class AnnSettings:
    """When and how to build an approximate vector index (off by default).

    Only for stores too big for the in-memory exact scan (``vector_cache_bytes``,
    ~680k chunks of 384-d per GiB). IVF_FLAT keeps full vectors, so its recall
    depends on ``nprobes`` alone; IVF_PQ's product quantisation is what cost
    recall (bench_search.py --ann, 384-d random vectors: IVF_PQ defaults 0.15 at
    nprobes 20, 0.49 at nprobes 64 + refine 10; IVF_FLAT 1.00 at 10k rows with
    nprobes 20, and at 100k rows 0.89 with nprobes 20, 1.00 with 50).
    ``num_partitions=None`` lets LanceDB pick."""

    min_rows: int = 500_000
    num_partitions: int | None = None
    nprobes: int = 50
    refine_factor: int | None = None


def table_name_for(vector_store_id: str) -> str:
    """A valid, collision-free table name: safe ids are kept readable,
    anything else is hashed (the two forms have distinct prefixes)."""
    if _SAFE_ID.fullmatch(vector_store_id):
        return f"s_{vector_store_id}"
    return "h_" + hashlib.sha256(vector_store_id.encode("utf-8")).hexdigest()


def _base_schema(dim: int, embedder_name: str) -> pa.Schema:
    return pa.schema(
        [
            pa.field("chunk_id", pa.string(), nullable=False),
            pa.field("file_id", pa.string(), nullable=False),
            pa.field("filename", pa.string()),
            pa.field("chunk_index", pa.int32()),
            pa.field("token_count", pa.int32()),
            pa.field("text", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
            pa.field("attributes", pa.string()),
        ],
        metadata={_META_EMBEDDER: embedder_name.encode(), _META_DIM: str(dim).encode()},
    )


def _fts_score(bm25: float) -> float:
    """BM25 is unbounded; s/(1+s) maps it monotonically into [0, 1)."""
    return max(0.0, bm25) / (1.0 + max(0.0, bm25))


@dataclass
class _VectorCache:
    """A table's vectors in memory, as of one generation of the table."""

    generation: tuple[int, int]  # this index's writes to the table, and the table's version (shared)
    matrix: npt.NDArray[np.float32]  # (rows, dim), L2-normalised
    row_ids: npt.NDArray[np.uint64]  # LanceDB _rowid of each matrix row
    chunk_ids: list[str]
    masks: OrderedDict[str, npt.NDArray[np.bool_]]  # where clause -> matching rows

    @property
    def nbytes(self) -> int:
        return int(self.matrix.nbytes + self.row_ids.nbytes + 64 * len(self.chunk_ids))


class _StaleCache(Exception):
    """The table changed under a cached matrix (a write outside this index)."""


class VectorIndex:
    """Chunks of files per vector store, searchable by vector, BM25 or both."""

    def __init__(
        self,
        uri: str,
        embedder: Embedder,
        *,
        storage_options: Mapping[str, str] | None = None,
        fts_reindex_rows: int = 256,
        ann: AnnSettings | None = None,
        cleanup_older_than: timedelta = timedelta(hours=1),
        query_cache_size: int = 512,
        vector_cache_bytes: int = 1 << 30,
        shared: bool = False,
        max_open_tables: int = 256,
    ) -> None:
        """`shared`: other server processes write the same tables (a shared log): every read
        checks for their commits (read consistency 0: the latest version, one listing per read).
        `max_open_tables`: table handles kept open, the least recently used closed first (a
        store deleted through another process is never used here again, and so goes too)."""
        self.uri = uri
        self._shared = shared
        self.embedder = embedder
        self._storage_options = dict(storage_options) if storage_options else None
        self._fts_reindex_rows = fts_reindex_rows
        self._ann = ann
        self._cleanup_older_than = cleanup_older_than
        self._db: Any = None
        self._tables: OrderedDict[str, Any] = OrderedDict()
        self._max_open_tables = max_open_tables
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._query_cache: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()
        self._query_cache_size = query_cache_size
        self._vector_cache_bytes = vector_cache_bytes
        self._vectors: OrderedDict[str, _VectorCache] = OrderedDict()
        self._generation: dict[str, int] = {}
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._scanner: concurrent.futures.ThreadPoolExecutor | None = None

    # ------------------------------------------------------------ plumbing

    def _connect(self) -> Any:
        with self._guard:
            if self._db is None:
                import lancedb

                self._db = lancedb.connect(
                    self.uri,
                    storage_options=self._storage_options,
                    read_consistency_interval=timedelta(0) if self._shared else None,
                )
            return self._db

    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def _changed(self, name: str, table: Any | None) -> None:
        """After a write to ``name`` (under its lock): cached vectors and row
        ids are stale (LanceDB row ids move on delete, update and
        compaction). A store that was cached is reloaded here, in the
        writer's thread, so the next search does not pay for it."""
        with self._guard:
            self._generation[name] = self._generation.get(name, 0) + 1
            was_cached = self._vectors.pop(name, None) is not None
        if was_cached and table is not None:
            with contextlib.suppress(Exception):  # the next search retries
                self._vector_cache(name, table)

    def _vector_cache(self, name: str, table: Any) -> _VectorCache | None:
        """The table's vectors in memory (loaded on first use), or ``None``
        if they do not fit the cache budget."""
        version = int(table.version) if self._shared else 0  # another process may have written
        with self._guard:
            generation = (self._generation.get(name, 0), version)
            cached = self._vectors.get(name)
            if cached is not None and cached.generation == generation:
                self._vectors.move_to_end(name)
                return cached
        rows = table.count_rows()
        dim = table.schema.field("vector").type.list_size
        if rows * (dim * 4 + 72) > self._vector_cache_bytes:
            return None
        data = table.search().select(["chunk_id", "vector"]).with_row_id(True).limit(max(rows, 1)).to_arrow()
        vectors = data.column("vector").combine_chunks()
        matrix = (
            np.ascontiguousarray(vectors.values.to_numpy(zero_copy_only=False).reshape(-1, dim), dtype=np.float32)
            if len(vectors)
            else np.zeros((0, dim), dtype=np.float32)
        )
        cache = _VectorCache(
            generation=generation,
            matrix=matrix,
            row_ids=data.column("_rowid").to_numpy().astype(np.uint64),
            chunk_ids=data.column("chunk_id").to_pylist(),
            masks=OrderedDict(),
        )
        with self._guard:
            if self._generation.get(name, 0) != generation[0]:
                return cache  # written meanwhile: use once, do not keep
            self._vectors[name] = cache
            self._vectors.move_to_end(name)
            total = sum(c.nbytes for c in self._vectors.values())
            while total > self._vector_cache_bytes and len(self._vectors) > 1:
                _, evicted = self._vectors.popitem(last=False)
                total -= evicted.nbytes
        return cache

    def _filter_mask(self, cache: _VectorCache, table: Any, where: str) -> npt.NDArray[np.bool_]:
        """Which cached rows match ``where``, from a scan of the filter's
        columns (no vectors read); remembered for the cache's lifetime."""
        with self._guard:
            mask = cache.masks.get(where)
            if mask is not None:
                cache.masks.move_to_end(where)
                return mask
        rows = len(cache.chunk_ids)
        matched = table.search().where(where).select(["chunk_id"]).with_row_id(True).limit(max(rows, 1)).to_arrow()
        order = np.argsort(cache.row_ids)
        wanted = matched.column("_rowid").to_numpy().astype(np.uint64)
        pos = np.searchsorted(cache.row_ids, wanted, sorter=order)
        pos = np.clip(pos, 0, max(rows - 1, 0))
        found = order[pos] if rows else pos
        ok = cache.row_ids[found] == wanted if rows else np.zeros(0, dtype=bool)
        if not bool(ok.all()):
            raise _StaleCache(where)
        mask = np.zeros(rows, dtype=bool)
        mask[found] = True
        with self._guard:
            cache.masks[where] = mask
            while len(cache.masks) > 32:
                cache.masks.popitem(last=False)
        return mask

    def _vector_rows(
        self, name: str, table: Any, qvec: npt.NDArray[np.float32], where: str | None, depth: int
    ) -> list[dict[str, Any]]:
        """Nearest rows to ``qvec`` as ``chunk_id``/``_rowid``/``_distance``
        (cosine) dicts, best first: exact, from memory when the store fits
        the cache and has no ANN index; otherwise LanceDB's own search."""
        ann = self._ann is not None and self._has_vector_index(table)
        if not ann:
            rows = self._exact_vector_rows(name, table, qvec, where, depth)
            if rows is not None:
                return rows
        builder = table.search(qvec, vector_column_name="vector", query_type="vector").distance_type("cosine")
        if ann and self._ann is not None:
            builder = builder.nprobes(self._ann.nprobes)
            if self._ann.refine_factor:
                builder = builder.refine_factor(self._ann.refine_factor)
        if where:
            builder = builder.where(where, prefilter=True)
        result: list[dict[str, Any]] = (
            builder.limit(depth).select(["chunk_id", "_distance"]).with_row_id(True).to_list()
        )
        return result

    def _exact_vector_rows(
        self, name: str, table: Any, qvec: npt.NDArray[np.float32], where: str | None, depth: int
    ) -> list[dict[str, Any]] | None:
        """Top ``depth`` rows by cosine similarity from the in-memory matrix
        (no I/O); ``None`` if the store is not cached."""
        for attempt in range(2):
            cache = self._vector_cache(name, table)
            if cache is None:
                return None
            try:
                sims = self._similarities(cache.matrix, np.asarray(qvec, dtype=np.float32))
                candidates = np.flatnonzero(self._filter_mask(cache, table, where)) if where else None
                if candidates is not None:
                    sims = sims[candidates]
            except _StaleCache:
                if attempt:
                    return None  # let LanceDB answer
                self._changed(name, None)
                continue
            k = min(depth, sims.shape[0])
            if k == 0:
                return []
            top = np.argpartition(sims, -k)[-k:] if k < sims.shape[0] else np.arange(sims.shape[0])
            top = top[np.argsort(-sims[top], kind="stable")]
            positions = candidates[top] if candidates is not None else top
            return [
                {"chunk_id": cache.chunk_ids[pos], "_rowid": int(cache.row_ids[pos]), "_distance": 1.0 - sim}
                for pos, sim in zip(positions.tolist(), sims[top].tolist(), strict=True)
            ]
        return None

    def _similarities(self, matrix: npt.NDArray[np.float32], qvec: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """``matrix @ qvec``, row blocks in parallel on big stores: the scan is
        memory-bound (100k×384 = 154 MB read per query) and one core reads
        it in ~13 ms, two in ~7.5 ms (bench_search.py machine)."""
        rows = matrix.shape[0]
        parts = min(_SCAN_THREADS, rows // _SCAN_BLOCK_MIN)
        if parts < 2:
            return np.asarray(matrix @ qvec, dtype=np.float32)
        out = np.empty(rows, dtype=np.float32)
        bounds = [rows * i // parts for i in range(parts + 1)]
        pool = self._scan_pool()
        jobs = [
            pool.submit(np.dot, matrix[bounds[i] : bounds[i + 1]], qvec, out[bounds[i] : bounds[i + 1]])
            for i in range(parts)
        ]
        for job in jobs:
            job.result()
        return out

    def _scan_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._guard:
            if self._scanner is None:
                self._scanner = concurrent.futures.ThreadPoolExecutor(
                    _SCAN_THREADS, thread_name_prefix="threadlog-scan"
                )
            return self._scanner

    @staticmethod
    def _fts_rows(table: Any, query: str, where: str | None, depth: int) -> list[dict[str, Any]]:
        builder = table.search(query, query_type="fts", fts_columns="text")
        if where:
            builder = builder.where(where, prefilter=True)
        rows: list[dict[str, Any]] = builder.limit(depth).select(["chunk_id", "_score"]).with_row_id(True).to_list()
        return rows

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._guard:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="threadlog-fts")
            return self._executor

    def _fetch_rows(self, name: str, table: Any, wanted: list[tuple[str, int]]) -> dict[str, dict[str, Any]]:
        """Full result rows for ``(chunk_id, _rowid)`` pairs, by chunk id.

        By row id first (a direct read); a row id that no longer holds its
        chunk (the table changed since the ids were read) is looked up by
        chunk id instead, and the vector cache is dropped."""
        if not wanted:
            return {}
        fetched = table.take_row_ids([rowid for _, rowid in wanted]).select(_RESULT_COLUMNS).to_list()
        rows = {row["chunk_id"]: row for row in fetched}
        missing = [chunk_id for chunk_id, _ in wanted if chunk_id not in rows]
        if missing:
            self._changed(name, None)
            in_list = ", ".join(sql_string(c) for c in missing)
            for row in (
                table.search().where(f"chunk_id IN ({in_list})").select(_RESULT_COLUMNS).limit(len(missing)).to_list()
            ):
                rows[row["chunk_id"]] = row
        return rows

    def _check_embedder(self, name: str, table: Any) -> None:
        schema = table.schema
        meta = schema.metadata or {}
        stored = meta.get(_META_EMBEDDER, b"").decode()
        dim = schema.field("vector").type.list_size
        if (stored and stored != self.embedder.name) or dim != self.embedder.dim:
            raise EmbedderMismatch(
                f"table {name} was indexed with {stored or 'an unknown embedder'} ({dim}-d); "
                f"the server now uses {self.embedder.name} ({self.embedder.dim}-d). Re-index the store."
            )

    def _open(self, vector_store_id: str, *, create: bool) -> Any | None:
        name = table_name_for(vector_store_id)
        with self._guard:
            cached = self._tables.get(name)
            if cached is not None:
                self._tables.move_to_end(name)
                return cached
        db = self._connect()
        try:
            table = db.open_table(name)
        except ValueError:  # "Table '...' was not found"
            if not create:
                return None
            table = db.create_table(name, schema=_base_schema(self.embedder.dim, self.embedder.name), exist_ok=True)
        self._check_embedder(name, table)
        with self._guard:
            table = self._tables.setdefault(name, table)
            while len(self._tables) > self._max_open_tables:
                self._tables.popitem(last=False)
            return table

    def _ensure_attribute_columns(self, table: Any, wanted: Mapping[str, tuple[pa.DataType, Any]]) -> None:
        existing = set(table.schema.names)
        missing = [pa.field(col, typ) for col, (typ, _) in wanted.items() if col not in existing]
        if missing:
            table.add_columns(missing)  # metadata-only: new columns start as NULL

    def _ensure_fts_index(self, table: Any) -> Any | None:
        from lancedb.index import FTS

        for index in table.list_indices():
            if index.index_type == "FTS":
                return index
        table.create_index("text", config=FTS(with_position=False))
        return None

    def _has_vector_index(self, table: Any) -> bool:
        return any("vector" in index.columns and index.index_type != "FTS" for index in table.list_indices())

    def _maintain(self, table: Any) -> None:
        """Keep the FTS index current; build the ANN index when it pays."""
        index = self._ensure_fts_index(table)
        if index is not None:
            stats = table.index_stats(index.name)
            if stats is not None and stats.num_unindexed_rows > self._fts_reindex_rows:
                table.optimize(cleanup_older_than=self._cleanup_older_than)
        ann = self._ann
        if ann is not None and not self._has_vector_index(table) and table.count_rows() >= ann.min_rows:
            from lancedb.index import IvfFlat

            table.create_index("vector", config=IvfFlat(distance_type="cosine", num_partitions=ann.num_partitions))

    def _embed_query(self, query: str) -> npt.NDArray[np.float32]:
        """Query vector, from a small LRU: agents repeat queries often."""
        with self._guard:
            cached = self._query_cache.get(query)
            if cached is not None:
                self._query_cache.move_to_end(query)
                return cached
        vector: npt.NDArray[np.float32] = self.embedder.embed([query])[0]
        with self._guard:
            self._query_cache[query] = vector
            while len(self._query_cache) > self._query_cache_size:
                self._query_cache.popitem(last=False)
        return vector

    # ------------------------------------------------------------ writes

    async def add_file(
        self,
        vector_store_id: str,
        file_id: str,
        filename: str,
        chunks: Sequence[Chunk],
        attributes: Mapping[str, str | float | bool] | None = None,
    ) -> int:
        """Embed and store ``chunks``, replacing the file's previous chunks in
        this store atomically (a concurrent search sees old or new, never
        neither). Returns the number of chunks stored."""
        attrs = validate_attributes(attributes)
        texts = [c.text for c in chunks]
        vectors = (
            await anyio.to_thread.run_sync(self.embedder.embed, texts)
            if texts
            else np.zeros((0, self.embedder.dim), dtype=np.float32)
        )
        return await anyio.to_thread.run_sync(
            self._write_file, vector_store_id, file_id, filename, list(chunks), attrs, vectors
        )

    def _write_file(
        self,
        vector_store_id: str,
        file_id: str,
        filename: str,
        chunks: list[Chunk],
        attrs: dict[str, AttributeValue],
        vectors: npt.NDArray[np.float32],
    ) -> int:
        name = table_name_for(vector_store_id)
        with self._lock(name):
            table = self._open(vector_store_id, create=True)
            assert table is not None
            file_filter = f"file_id = {sql_string(file_id)}"
            existing = table.count_rows(file_filter)
            if not chunks:
                if existing:
                    try:
                        table.delete(file_filter)
                        self._maintain(table)
                    finally:
                        self._changed(name, table)
                return 0
            wanted = attribute_columns_for(attrs)
            self._ensure_attribute_columns(table, wanted)
            schema = table.schema
            n = len(chunks)
            dim = schema.field("vector").type.list_size
            if vectors.shape != (n, dim):
                raise ValueError(f"embedder returned {vectors.shape}, expected ({n}, {dim})")
            columns: dict[str, pa.Array] = {
                "chunk_id": pa.array([f"{file_id}#{c.index}" for c in chunks], pa.string()),
                "file_id": pa.array([file_id] * n, pa.string()),
                "filename": pa.array([filename] * n, pa.string()),
                "chunk_index": pa.array([c.index for c in chunks], pa.int32()),
                "token_count": pa.array([c.token_count for c in chunks], pa.int32()),
                "text": pa.array([c.text for c in chunks], pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel(), pa.float32()), dim
                ),
                "attributes": pa.array([json.dumps(attrs, ensure_ascii=False)] * n, pa.string()),
            }
            for field in schema:
                if field.name.startswith(ATTRIBUTE_PREFIX):
                    value = wanted.get(field.name, (None, None))[1]
                    columns[field.name] = pa.array([value] * n, field.type)
            data = pa.table([columns[f.name] for f in schema], schema=schema)
            if existing:
                (
                    table.merge_insert("chunk_id")
                    .when_matched_update_all()
                    .when_not_matched_insert_all()
                    .when_not_matched_by_source_delete(file_filter)
                    .execute(data)
                )
            else:
                table.add(data)
            try:
                self._maintain(table)
            finally:
                self._changed(name, table)
            return n

    async def remove_file(self, vector_store_id: str, file_id: str) -> None:
        await anyio.to_thread.run_sync(self._remove_file, vector_store_id, file_id)

    def _remove_file(self, vector_store_id: str, file_id: str) -> None:
        name = table_name_for(vector_store_id)
        with self._lock(name):
            table = self._open(vector_store_id, create=False)
            if table is None:
                return
            file_filter = f"file_id = {sql_string(file_id)}"
            if table.count_rows(file_filter):
                try:
                    table.delete(file_filter)
                finally:
                    self._changed(name, table)

    async def drop_store(self, vector_store_id: str) -> None:
        await anyio.to_thread.run_sync(self._drop_store, vector_store_id)

    def _drop_store(self, vector_store_id: str) -> None:
        name = table_name_for(vector_store_id)
        with self._lock(name):
            with self._guard:
                self._tables.pop(name, None)
            self._changed(name, None)
            with contextlib.suppress(ValueError, FileNotFoundError):  # already gone
                self._connect().drop_table(name)

    async def update_attributes(
        self, vector_store_id: str, file_id: str, attributes: Mapping[str, str | float | bool]
    ) -> None:
        """Replace (not merge) the file's attributes, as OpenAI's update does."""
        attrs = validate_attributes(attributes)
        await anyio.to_thread.run_sync(self._update_attributes, vector_store_id, file_id, attrs)

    def _update_attributes(self, vector_store_id: str, file_id: str, attrs: dict[str, AttributeValue]) -> None:
        name = table_name_for(vector_store_id)
        with self._lock(name):
            table = self._open(vector_store_id, create=False)
            if table is None:
                return
            file_filter = f"file_id = {sql_string(file_id)}"
            if not table.count_rows(file_filter):
                return
            wanted = attribute_columns_for(attrs)
            self._ensure_attribute_columns(table, wanted)
            values_sql = {"attributes": sql_string(json.dumps(attrs, ensure_ascii=False))}
            for field in table.schema:
                if not field.name.startswith(ATTRIBUTE_PREFIX):
                    continue
                if field.name in wanted:
                    value = wanted[field.name][1]
                    if isinstance(value, bool):
                        values_sql[field.name] = "TRUE" if value else "FALSE"
                    elif isinstance(value, float):
                        values_sql[field.name] = repr(value)
                    else:
                        values_sql[field.name] = sql_string(str(value))
                else:
                    sql_type = {"string": "STRING", "double": "DOUBLE", "bool": "BOOLEAN"}[str(field.type)]
                    values_sql[field.name] = f"CAST(NULL AS {sql_type})"
            try:
                table.update(where=file_filter, values_sql=values_sql)
            finally:
                self._changed(name, table)

    async def fold_pending(self, vector_store_id: str) -> None:
        """Fold any unindexed rows into the FTS index (no-op if there are none)."""
        await anyio.to_thread.run_sync(self._fold_pending, vector_store_id)

    def _fold_pending(self, vector_store_id: str) -> None:
        name = table_name_for(vector_store_id)
        with self._lock(name):
            table = self._open(vector_store_id, create=False)
            if table is None:
                return
            for index in table.list_indices():
                if index.index_type == "FTS":
                    stats = table.index_stats(index.name)
                    if stats is not None and stats.num_unindexed_rows > 0:
                        try:
                            table.optimize(cleanup_older_than=self._cleanup_older_than)
                        finally:
                            self._changed(name, table)
                    return

    async def optimize(self, vector_store_id: str) -> None:
        """Compact files, fold new rows into indices, prune old versions."""
        await anyio.to_thread.run_sync(self._optimize, vector_store_id)

    def _optimize(self, vector_store_id: str) -> None:
        name = table_name_for(vector_store_id)
        with self._lock(name):
            table = self._open(vector_store_id, create=False)
            if table is not None:
                try:
                    table.optimize(cleanup_older_than=self._cleanup_older_than)
                finally:
                    self._changed(name, table)

    # ------------------------------------------------------------ reads

    async def usage_bytes(self, vector_store_id: str) -> int:
        return await anyio.to_thread.run_sync(self._usage_bytes, vector_store_id)

    def _usage_bytes(self, vector_store_id: str) -> int:
        """Bytes of the current version's data files plus its indices."""
        table = self._open(vector_store_id, create=False)
        if table is None:
            return 0
        total = int(table.stats()["total_bytes"])
        for index in table.list_indices():
            total += int(getattr(index, "size_bytes", 0) or 0)
        return total

    async def search(
        self,
        vector_store_ids: Sequence[str],
        query: str,
        max_num_results: int = 20,
        score_threshold: float = 0.0,
        filters: Mapping[str, Any] | None = None,
        ranker: str = "auto",
        mode: str = "hybrid",
    ) -> list[SearchHit]:
        """Best chunks for ``query`` across the stores, scores in [0, 1].

        ``mode``: "hybrid" (vector + BM25 fused by RRF), "vector" (score =
        cosine similarity clipped at 0) or "fts" (score = bm25/(1+bm25)).
        ``ranker`` "none" skips fusion in hybrid mode and ranks by vector
        similarity alone; the other OpenAI ranker names all mean RRF here.
        Raises ``ValueError`` (``FilterError`` for filters) on bad arguments.
        """
        if not 1 <= max_num_results <= MAX_RESULTS:
            raise ValueError(f"max_num_results must be between 1 and {MAX_RESULTS}")
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError("score_threshold must be between 0 and 1")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {sorted(MODES)}")
        if ranker not in RANKERS:
            raise ValueError(f"ranker must be one of {sorted(RANKERS)}")
        if filters is not None:
            compile_filter(filters, ())  # validate before doing any work
        if ranker == "none" and mode == "hybrid":
            mode = "vector"
        store_ids = list(dict.fromkeys(vector_store_ids))

        def embed_and_search() -> list[SearchHit]:  # one thread hop, not two
            qvec = (lambda: self._embed_query(query)) if mode in ("hybrid", "vector") else None
            return self._search(store_ids, query, qvec, max_num_results, score_threshold, filters, mode)

        return await anyio.to_thread.run_sync(embed_and_search)

    def _search(
        self,
        vector_store_ids: list[str],
        query: str,
        qvec: npt.NDArray[np.float32] | Callable[[], npt.NDArray[np.float32]] | None,
        max_num_results: int,
        score_threshold: float,
        filters: Mapping[str, Any] | None,
        mode: str,
    ) -> list[SearchHit]:
        """The thread-side body of ``search``; ``qvec`` may be a callable
        that embeds the query (called while BM25 runs)."""
        # Each list gives max(HYBRID_DEPTH, max_num_results) candidates (a
        # chunk ranked past that by both lists cannot outscore one ranked
        # first by either; see fusion.py). Both lists carry ids only; text
        # is read for the final results alone.
        depth = max_num_results if mode != "hybrid" else max(HYBRID_DEPTH, max_num_results)
        rowids: dict[tuple[str, str], int] = {}
        tables: dict[str, Any] = {}
        vector_ranked: list[tuple[float, tuple[str, str]]] = []
        fts_ranked: list[tuple[float, tuple[str, str]]] = []
        targets: list[tuple[str, Any, str | None]] = []
        for store_id in vector_store_ids:
            table = self._open(store_id, create=False)
            if table is None:
                continue
            name = table_name_for(store_id)
            tables[name] = table
            where = compile_filter(filters, table.schema.names)
            if where != "FALSE":
                targets.append((name, table, where if where != "TRUE" else None))
        # BM25 runs in LanceDB's threads while this one embeds the query and
        # scans the vectors (numpy releases the GIL): on 2 cores the hybrid
        # query costs about the slower half, not the sum.
        fts_jobs: list[tuple[str, concurrent.futures.Future[list[dict[str, Any]]]]] = []
        if mode in ("hybrid", "fts") and query.strip():
            for name, table, where in targets:
                fts_jobs.append((name, self._pool().submit(self._fts_rows, table, query, where, depth)))
        if callable(qvec):
            qvec = qvec()
        if qvec is not None:
            for name, table, where in targets:
                for row in self._vector_rows(name, table, qvec, where, depth):
                    key = (name, row["chunk_id"])
                    rowids[key] = int(row["_rowid"])
                    vector_ranked.append((max(0.0, min(1.0, 1.0 - float(row["_distance"]))), key))
        for name, job in fts_jobs:
            for row in job.result():
                key = (name, row["chunk_id"])
                rowids[key] = int(row["_rowid"])
                fts_ranked.append((float(row["_score"]), key))
        vector_ranked.sort(key=lambda item: -item[0])
        fts_ranked.sort(key=lambda item: -item[0])
        scored: list[tuple[tuple[str, str], float]]
        if mode == "vector":
            scored = [(key, score) for score, key in vector_ranked]
        elif mode == "fts":
            scored = [(key, _fts_score(score)) for score, key in fts_ranked]
        else:
            present = [(r, w) for r, w in ((vector_ranked, VECTOR_WEIGHT), (fts_ranked, BM25_WEIGHT)) if r]
            scored = reciprocal_rank_fusion(
                [[key for _, key in ranked[:depth]] for ranked, _ in present], weights=[w for _, w in present]
            )
        chosen = [(key, score) for key, score in scored if score >= score_threshold][:max_num_results]
        by_table: dict[str, list[tuple[str, int]]] = {}
        for (name, chunk_id), _ in chosen:
            by_table.setdefault(name, []).append((chunk_id, rowids[(name, chunk_id)]))
        full = {name: self._fetch_rows(name, tables[name], wanted) for name, wanted in by_table.items()}
        hits: list[SearchHit] = []
        for (name, chunk_id), score in chosen:
            found = full[name].get(chunk_id)
            if found is None:  # removed between ranking and reading
                continue
            row = found
            hits.append(
                SearchHit(
                    file_id=row["file_id"],
                    filename=row["filename"] or "",
                    score=float(score),
                    content=row["text"] or "",
                    attributes=json.loads(row["attributes"] or "{}"),
                    chunk_index=int(row["chunk_index"]),
                )
            )
        return hits
