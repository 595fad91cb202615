"""TextEncoder: the bundled model loads from local files, encodes, normalises; unknown models fail."""

from __future__ import annotations

import numpy as np
import pytest

from services.embedder.text import BUNDLED_NAME, TextEncoder, normalize
from services.runtime.config import ConfigError


def test_bundled_model_encodes_meaningful_vectors(encoder: TextEncoder) -> None:
    assert encoder.name == BUNDLED_NAME and encoder.dimension == 384 and encoder.max_tokens == 256
    vectors = normalize(
        encoder.encode(
            ["The central bank raised interest rates.", "Rates were hiked by the Fed.", "I like cats."]
        )
    )
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > unrelated + 0.2


def test_encode_of_nothing_and_normalize_of_zero_rows(encoder: TextEncoder) -> None:
    assert encoder.encode([]).shape == (0, 384)
    out = normalize(np.array([[0.0, 0.0], [3.0, 4.0]]))
    assert out.tolist() == [[0.0, 0.0], [pytest.approx(0.6), pytest.approx(0.8)]]


def test_a_model_that_is_not_local_is_a_config_error(tmp_path: object) -> None:
    with pytest.raises(ConfigError, match="KITRADING_EMBEDDER_MODEL"):
        TextEncoder("no-such-org/no-such-model-kitrading").load()


def test_another_model_by_local_path(encoder: TextEncoder, tmp_path: object) -> None:
    from pathlib import Path

    target = Path(str(tmp_path)) / "copy"
    encoder.st.save(str(target))
    other = TextEncoder(str(target)).load()
    assert other.name == str(target) and other.dimension == 384
    text = ["EURUSD fell after the ECB decision."]
    assert np.allclose(other.encode(text), encoder.encode(text), atol=1e-5)
