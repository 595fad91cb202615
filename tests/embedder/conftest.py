"""Fixtures of the embedder tests: one bundled all-MiniLM-L6-v2 encoder for the session (CPU)."""

from __future__ import annotations

import pytest

from services.embedder.text import TextEncoder


@pytest.fixture(scope="session")
def encoder() -> TextEncoder:
    import torch

    torch.set_num_threads(1)
    return TextEncoder("", device="cpu", batch_size=64).load()
