"""The FAISS vector index of the chunks: exact while small, HNSW beyond a threshold; one file on disk.

Vector ids are the chunks' database ids (`rag.chunks.id`), vectors unit length, scores inner
products (= cosine similarity). Up to `exact_max_chunks` live vectors the index is
`IndexIDMap2(IndexFlatIP)`; above it `IndexIDMap2(IndexHNSWFlat)`, and back to exact below half
of it. HNSW cannot remove a vector: a deleted one is a tombstone that every search excludes (an
IDSelector) until the graph is rebuilt without them (when they are a fifth of it). A filtered
search (an allow-list of ids) small enough is exact over just those vectors; a larger one is the
index's own search with the allow-list as a selector. With CUDA and faiss-gpu, unfiltered searches
run exactly on a GPU copy (rebuilt after changes).

On disk (`index.faiss` in the service's volume), written atomically (temp file, fsync, rename,
fsync of the directory):

    b"KTRAGIX1" | u64 header length | header JSON (kind, dimension, tombstones, caller's meta) | faiss bytes

The file is a cache of the database: whoever loads it reconciles it with `rag.chunks`.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss as _faiss
import numpy as np

#: faiss's SWIG classes, untyped (its stubs miss the attributes used here).
faiss: Any = _faiss

MAGIC = b"KTRAGIX1"
EXACT, HNSW = "exact", "hnsw"
#: Tombstones that trigger an HNSW rebuild: this share of the graph, and at least this many.
COMPACT_SHARE, COMPACT_MIN = 0.2, 1024
#: A filtered search over at most this many allowed vectors is exact (numpy) whatever the index.
BRUTE_FORCE_MAX = 20_000


class IndexFileError(Exception):
    """The index file is missing, truncated or not one of ours."""


@dataclass(frozen=True, slots=True)
class IndexParams:
    exact_max_chunks: int = 20_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 40
    hnsw_ef_search: int = 64


@dataclass(frozen=True, slots=True)
class Hits:
    """Search results, best first: chunk ids, their scores, and the seconds the search itself took."""

    ids: np.ndarray  # (n,) int64
    scores: np.ndarray  # (n,) float32
    seconds: float


class GpuMirror:
    """An exact GPU copy of the live vectors for unfiltered searches (faiss-gpu and CUDA only)."""

    def __init__(self, device: int, memory_fraction: float) -> None:
        self.device = device
        self._resources: Any = faiss.StandardGpuResources()
        total = _gpu_total_bytes(device)
        if total:
            self._resources.setTempMemory(int(total * memory_fraction))
        self._index: Any = None
        self._version = -1

    def search(self, index: VectorIndex, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._version != index.version:
            ids, vectors = index.live_vectors()
            cpu = faiss.IndexIDMap(faiss.IndexFlatIP(index.dimension))
            if len(ids):
                cpu.add_with_ids(vectors, ids)
            self._index = faiss.index_cpu_to_gpu(self._resources, self.device, cpu)
            self._version = index.version
        scores, ids = self._index.search(query, k)
        return scores, ids


def gpu_mirror(use_gpu: bool, device: int, memory_fraction: float) -> tuple[GpuMirror | None, str]:
    """A GPU mirror when asked for and possible, and why not otherwise."""
    if not use_gpu:
        return None, "GPU disabled (KITRADING_RAG_USE_GPU=false)"
    count = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if count <= 0 or not hasattr(faiss, "StandardGpuResources"):
        return None, "faiss has no GPU support here (faiss-cpu, or no CUDA device)"
    if device >= count:
        return None, f"GPU {device} not found ({count} visible)"
    return GpuMirror(device, memory_fraction), f"GPU {device}"


def _gpu_total_bytes(device: int) -> int:
    from services.runtime.gpu import gpu_memory_total

    return gpu_memory_total(device) or 0


class VectorIndex:
    """The chunk vectors; every method is thread-safe (one lock), none is async."""

    def __init__(self, dimension: int, params: IndexParams, *, gpu: GpuMirror | None = None) -> None:
        self.dimension = dimension
        self.params = params
        self.gpu = gpu
        self._lock = threading.RLock()
        self._index: Any = self._empty(EXACT)
        self.kind = EXACT
        self._deleted: set[int] = set()
        #: Bumped by every change (caches of the caller and the GPU mirror compare it).
        self.version = 0
        self._positions: tuple[int, np.ndarray, np.ndarray] | None = None

    # ---- building ----

    def _empty(self, kind: str) -> Any:
        if kind == EXACT:
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dimension))
        graph = faiss.IndexHNSWFlat(self.dimension, self.params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = self.params.hnsw_ef_construction
        graph.hnsw.efSearch = self.params.hnsw_ef_search
        return faiss.IndexIDMap2(graph)

    def _build(self, kind: str, ids: np.ndarray, vectors: np.ndarray) -> Any:
        index = self._empty(kind)
        if len(ids):
            index.add_with_ids(vectors, ids)
        return index

    def _rebuild(self, kind: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._index, self.kind, self._deleted = self._build(kind, ids, vectors), kind, set()

    def _rebalance_kind(self) -> str | None:
        """The index this one should be rebuilt as: exact <-> HNSW by the live count, an HNSW
        without its tombstones once they are many; None when it is fine as it is."""
        live = self.live_count
        limit = self.params.exact_max_chunks
        if self.kind == EXACT and live > limit:
            return HNSW
        if self.kind == HNSW and live <= limit // 2:
            return EXACT
        if self.kind == HNSW and len(self._deleted) > max(COMPACT_MIN, COMPACT_SHARE * self._index.ntotal):
            return HNSW
        return None

    def _rebalance(self) -> None:
        kind = self._rebalance_kind()
        if kind is not None:
            self._rebuild(kind, *self._live_arrays())

    def _swap_in(
        self,
        kind: str,
        live: tuple[np.ndarray, np.ndarray],
        version: int,
        new: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Build a `kind` index of the `live` (ids, vectors) at `version` plus the `new` ones
        without holding the lock, so that searches go on against the current index while a graph
        is built (seconds at 100,000 vectors), then swap it in. If the index changed meanwhile
        (callers serialise their writes, so only a writer of their own could), it is rebuilt from
        its live vectors then, under the lock."""

        def combined(ids: np.ndarray, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return (
                (ids, vectors)
                if new is None
                else (np.concatenate([ids, new[0]]), np.vstack([vectors, new[1]]))
            )

        built = self._build(kind, *combined(*live))
        with self._lock:
            if self.version == version:
                self._index, self.kind, self._deleted = built, kind, set()
            elif new is not None:
                self._rebuild(kind, *combined(*self._live_arrays()))
            else:
                self._rebalance()
            self._changed()

    # ---- changes ----

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add `vectors` (n, dimension) float32 under `ids` (n,) int64 (new ids only)."""
        ids, vectors = _ids(ids), _vectors(vectors, self.dimension)
        if len(ids) != len(vectors):
            raise ValueError("one id per vector")
        if not len(ids):
            return
        with self._lock:
            if self.kind != EXACT or self.live_count + len(ids) <= self.params.exact_max_chunks:
                self._index.add_with_ids(vectors, ids)
                self._changed()
                return
            live, version = self._live_arrays(), self.version
        # Past the threshold: the HNSW graph of all of them, built while searches go on.
        self._swap_in(HNSW, live, version, new=(ids, vectors))

    def remove(self, ids: Iterable[int]) -> int:
        """Remove the vectors of `ids` (unknown ids are ignored); returns how many were there."""
        wanted = _ids(np.fromiter((int(i) for i in ids), dtype=np.int64))
        with self._lock:
            present = wanted[np.isin(wanted, self._all_ids())]
            present = present[~np.isin(present, np.fromiter(self._deleted, dtype=np.int64))]
            if not len(present):
                return 0
            if self.kind == EXACT:
                self._index.remove_ids(present)
            else:
                self._deleted.update(int(i) for i in present)
            self._changed()
            kind = self._rebalance_kind()
            if kind is None:
                return len(present)
            live, version = self._live_arrays(), self.version
        self._swap_in(kind, live, version)
        return len(present)

    def _changed(self) -> None:
        self.version += 1
        self._positions = None

    # ---- reading ----

    @property
    def live_count(self) -> int:
        return int(self._index.ntotal) - len(self._deleted)

    @property
    def deleted_count(self) -> int:
        return len(self._deleted)

    def _all_ids(self) -> np.ndarray:
        return faiss.vector_to_array(self._index.id_map).astype(np.int64, copy=False)

    def _matrix(self) -> np.ndarray:
        """A zero-copy view of every stored vector (tombstones included), in id_map order."""
        inner = faiss.downcast_index(self._index.index)
        storage = faiss.downcast_index(inner.storage) if self.kind == HNSW else inner
        n = int(storage.ntotal)
        if n == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return faiss.rev_swig_ptr(storage.get_xb(), n * self.dimension).reshape(n, self.dimension)

    def _live_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        ids, matrix = self._all_ids(), self._matrix()
        if self._deleted:
            keep = ~np.isin(ids, np.fromiter(self._deleted, dtype=np.int64))
            return ids[keep].copy(), matrix[keep].copy()
        return ids.copy(), matrix.copy()

    def live_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the live ids (n,) and vectors (n, dimension)."""
        with self._lock:
            return self._live_arrays()

    def live_ids(self) -> np.ndarray:
        with self._lock:
            ids = self._all_ids()
            if self._deleted:
                ids = ids[~np.isin(ids, np.fromiter(self._deleted, dtype=np.int64))]
            return ids.copy()

    def memory_bytes(self) -> int:
        """What the index holds: vectors, ids (twice: IDMap2's reverse map) and HNSW links."""
        n = int(self._index.ntotal)
        links = 0
        if self.kind == HNSW:
            graph = faiss.downcast_index(self._index.index).hnsw
            links = int(graph.neighbors.size()) * 4 + int(graph.offsets.size()) * 8 + n * 4
        return n * self.dimension * 4 + n * 8 * 3 + links

    def describe(self) -> str:
        with self._lock:
            if self.kind == EXACT:
                head = "exact (IndexFlatIP)"
            else:
                head = f"HNSW M={self.params.hnsw_m} efSearch={self.params.hnsw_ef_search}"
            gpu = f", unfiltered searches on GPU {self.gpu.device}" if self.gpu is not None else ""
            return f"{head}, {self.live_count} vectors, {len(self._deleted)} deleted pending{gpu}"

    def search(self, query: np.ndarray, k: int, *, allowed: np.ndarray | None = None) -> Hits:
        """The `k` nearest live vectors to `query` (dimension,), only among `allowed` ids if given."""
        q = _vectors(query.reshape(1, -1), self.dimension)
        with self._lock:
            started = time.perf_counter()
            if allowed is not None and (self.kind == EXACT or len(allowed) <= BRUTE_FORCE_MAX):
                ids, scores = self._brute_force(q[0], k, _ids(allowed))
                return Hits(ids, scores, time.perf_counter() - started)
            if self.gpu is not None and allowed is None and not self._deleted:
                scores2, ids2 = self.gpu.search(self, q, k)
            else:
                scores2, ids2 = self._index.search(q, k, params=self._params(allowed, k))
            keep = ids2[0] >= 0
            return Hits(ids2[0][keep].astype(np.int64), scores2[0][keep], time.perf_counter() - started)

    def _params(self, allowed: np.ndarray | None, k: int) -> Any:
        params = faiss.SearchParametersHNSW() if self.kind == HNSW else faiss.SearchParameters()
        if self.kind == HNSW:
            params.efSearch = max(self.params.hnsw_ef_search, k)
        keep: list[Any] = []  # the selectors read these arrays: keep them alive through the search
        if allowed is not None:
            arr = _ids(allowed)
            batch = faiss.IDSelectorBatch(len(arr), faiss.swig_ptr(arr))
            keep += [arr, batch]
            params.sel = batch
        elif self._deleted:
            arr = np.fromiter(self._deleted, dtype=np.int64)
            batch = faiss.IDSelectorBatch(len(arr), faiss.swig_ptr(arr))
            negated = faiss.IDSelectorNot(batch)
            keep += [arr, batch, negated]
            params.sel = negated
        params.keep_alive = keep  # a Python attribute on the SWIG object
        return params

    def _brute_force(self, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        all_ids, order, matrix = self._id_positions()
        if not len(all_ids) or not len(allowed):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        where = np.searchsorted(all_ids[order], allowed)
        where = np.clip(where, 0, len(order) - 1)
        found = all_ids[order[where]] == allowed
        if self._deleted:
            found &= ~np.isin(allowed, np.fromiter(self._deleted, dtype=np.int64))
        positions = order[where[found]]
        if not len(positions):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        scores = matrix[positions] @ q
        top = min(k, len(scores))
        best = np.argpartition(-scores, top - 1)[:top]
        best = best[np.argsort(-scores[best], kind="stable")]
        return all_ids[positions[best]], scores[best].astype(np.float32)

    def _id_positions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._positions is None or self._positions[0] != self.version:
            ids = self._all_ids()
            self._positions = (self.version, ids, np.argsort(ids, kind="stable"))
        _, ids, order = self._positions
        return ids, order, self._matrix()

    # ---- the file ----

    def save(self, path: Path, meta: dict[str, Any]) -> int:
        """Write the index atomically to `path` with the caller's `meta`; returns the bytes written."""
        with self._lock:
            data = faiss.serialize_index(self._index)
            header = {
                "kind": self.kind,
                "dimension": self.dimension,
                "deleted": sorted(self._deleted),
                "meta": meta,
            }
        raw = json.dumps(header).encode()
        write_atomic(path, [MAGIC, struct.pack("<Q", len(raw)), raw, data.tobytes()])
        return len(MAGIC) + 8 + len(raw) + int(data.nbytes)

    @classmethod
    def load(
        cls, path: Path, params: IndexParams, *, gpu: GpuMirror | None = None
    ) -> tuple[VectorIndex, dict[str, Any]]:
        """The index in `path` and the meta saved with it; `IndexFileError` when it cannot be read."""
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise IndexFileError("no index file") from None
        except OSError as exc:
            raise IndexFileError(f"unreadable ({exc})") from None
        try:
            if blob[: len(MAGIC)] != MAGIC:
                raise IndexFileError("not an index file")
            (length,) = struct.unpack("<Q", blob[len(MAGIC) : len(MAGIC) + 8])
            start = len(MAGIC) + 8
            header = json.loads(blob[start : start + length])
            data = np.frombuffer(blob, dtype=np.uint8, offset=start + length)
            index = faiss.deserialize_index(data)
        except IndexFileError:
            raise
        except Exception as exc:  # truncated, garbled: faiss raises RuntimeError, json ValueError
            raise IndexFileError(f"corrupt ({type(exc).__name__})") from None
        out = cls(int(header["dimension"]), params, gpu=gpu)
        if not isinstance(index, faiss.IndexIDMap2) or index.d != out.dimension:
            raise IndexFileError("unexpected index type or dimension")
        out._index, out.kind = index, str(header["kind"])
        out._deleted = {int(i) for i in header["deleted"]}
        if out.kind == HNSW:
            faiss.downcast_index(index.index).hnsw.efSearch = params.hnsw_ef_search
        with out._lock:
            out._rebalance()
        return out, dict(header["meta"])


def write_atomic(path: Path, parts: Iterable[bytes | memoryview]) -> None:
    """Write `parts` to `path` so that a crash leaves the old file or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as out:
        for part in parts:
            out.write(part)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ids(ids: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)


def _vectors(vectors: np.ndarray, dimension: int) -> np.ndarray:
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    if out.ndim != 2 or out.shape[1] != dimension:
        raise ValueError(f"vectors must be (n, {dimension}), got {out.shape}")
    return out
