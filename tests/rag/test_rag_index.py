"""The FAISS index on its own: exact below the threshold, HNSW above (and back), deletes (removed or
tombstoned), filtered search, HNSW recall against exact, and the file: atomic, corrupt -> error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.rag.index import EXACT, HNSW, IndexFileError, IndexParams, VectorIndex


def unit(rows: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, dim))
    x = centers[rng.integers(0, 20, rows)] + 0.7 * rng.standard_normal((rows, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_top(x: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    return ids[np.argsort(-(x @ q), kind="stable")[:k]].tolist()


def test_exact_then_hnsw_then_exact_again() -> None:
    x = unit(600)
    ids = np.arange(1, 601, dtype=np.int64)
    index = VectorIndex(32, IndexParams(exact_max_chunks=200, hnsw_m=16, hnsw_ef_search=64))
    index.add(ids[:150], x[:150])
    assert index.kind == EXACT and index.live_count == 150
    hits = index.search(x[3], 5)
    assert hits.ids[0] == 4 and hits.scores[0] == pytest.approx(1.0, abs=1e-5)
    index.add(ids[150:], x[150:])
    assert index.kind == HNSW and index.live_count == 600
    recall = np.mean(
        [
            len(set(index.search(x[i], 10).ids.tolist()) & set(exact_top(x, ids, x[i], 10))) / 10
            for i in range(50)
        ]
    )
    assert recall >= 0.95
    assert index.remove([4, 5, 999_999]) == 2  # unknown ids are ignored
    assert index.deleted_count == 2 and index.live_count == 598  # tombstones in HNSW
    assert 4 not in index.search(x[3], 10).ids.tolist()
    index.remove(range(1, 550))
    assert index.kind == EXACT and index.live_count == 51 and index.deleted_count == 0
    assert set(index.search(x[580], 51).ids.tolist()) == set(range(550, 601))


def test_filtered_search_only_returns_allowed_ids() -> None:
    x = unit(400, seed=1)
    ids = np.arange(10, 410, dtype=np.int64)
    for limit in (1000, 100):  # exact, then HNSW
        index = VectorIndex(32, IndexParams(exact_max_chunks=limit))
        index.add(ids, x)
        allowed = ids[::7]
        hits = index.search(x[0], 10, allowed=allowed)
        assert set(hits.ids.tolist()) <= set(allowed.tolist()) and len(hits.ids) == 10
        assert hits.ids.tolist() == exact_top(x[::7], allowed, x[0], 10)  # small allow-lists are exact
        assert len(index.search(x[0], 10, allowed=np.array([], dtype=np.int64)).ids) == 0


def test_the_file_round_trips_and_a_damaged_one_is_refused(tmp_path: Path) -> None:
    x = unit(300, seed=2)
    ids = np.arange(1, 301, dtype=np.int64)
    index = VectorIndex(32, IndexParams(exact_max_chunks=100))
    index.add(ids, x)
    index.remove([7, 8])
    path = tmp_path / "rag" / "index.faiss"
    size = index.save(path, {"model": "m"})
    assert path.stat().st_size == size and not list(path.parent.glob(".*.tmp"))
    loaded, meta = VectorIndex.load(path, index.params)
    assert meta == {"model": "m"} and loaded.kind == HNSW and loaded.deleted_count == 2
    assert set(loaded.live_ids().tolist()) == set(range(1, 301)) - {7, 8}
    assert loaded.search(x[20], 3).ids.tolist() == index.search(x[20], 3).ids.tolist()

    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(IndexFileError, match="corrupt"):
        VectorIndex.load(path, index.params)
    path.write_bytes(b"not an index")
    with pytest.raises(IndexFileError):
        VectorIndex.load(path, index.params)
    with pytest.raises(IndexFileError, match="no index file"):
        VectorIndex.load(tmp_path / "absent.faiss", index.params)


def test_shapes_are_checked_at_the_boundary() -> None:
    index = VectorIndex(8, IndexParams())
    with pytest.raises(ValueError, match=r"\(n, 8\)"):
        index.add(np.arange(2), np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="one id per vector"):
        index.add(np.arange(3), np.zeros((2, 8), np.float32))


def test_searches_go_on_while_the_hnsw_graph_is_built() -> None:
    """Crossing the threshold builds the graph of every vector (about a second at 20,000 here):
    without the index's lock, so searches answer from the exact index meanwhile (they used to
    wait for the whole build), and the first search after it sees the new vectors."""
    import threading

    x = unit(20_000, 64, seed=5)
    ids = np.arange(20_000, dtype=np.int64)
    index = VectorIndex(64, IndexParams(exact_max_chunks=19_900, hnsw_m=16, hnsw_ef_search=64))
    index.add(ids[:19_800], x[:19_800])
    adding = threading.Thread(target=index.add, args=(ids[19_800:], x[19_800:]))
    answered_during_build = 0
    adding.start()
    while adding.is_alive():
        hits = index.search(x[0], 5)
        if adding.is_alive():
            answered_during_build += 1
            assert hits.ids[0] == 0 and index.kind == EXACT  # the old index, complete
    adding.join()
    assert answered_during_build >= 3, answered_during_build
    assert index.kind == HNSW and index.live_count == 20_000
    assert index.search(x[19_999], 1).ids.tolist() == [19_999]


def test_a_write_during_the_build_is_kept() -> None:
    """The RAG service serialises its writes, but the index does not rely on it: a vector added
    while the graph is built (the build's snapshot no longer current) is in the index after it."""
    import threading
    import time

    x = unit(20_050, 64, seed=6)
    ids = np.arange(20_050, dtype=np.int64)
    index = VectorIndex(64, IndexParams(exact_max_chunks=19_900, hnsw_m=16, hnsw_ef_search=64))
    index.add(ids[:19_800], x[:19_800])
    adding = threading.Thread(target=index.add, args=(ids[19_800:20_000], x[19_800:20_000]))
    adding.start()
    time.sleep(0.2)
    index.add(ids[20_000:], x[20_000:])  # meanwhile: exact still, one more batch
    adding.join()
    assert index.kind == HNSW and index.live_count == 20_050
    assert sorted(index.live_ids().tolist()) == ids.tolist()
    for i in (0, 19_900, 20_049):
        assert index.search(x[i], 1).ids.tolist() == [i]
