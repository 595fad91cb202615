"""Model registry: versions, rollback, keep-last-N, and atomic publishing under SIGKILL."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.forecast.registry import forecast_registry
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services.training.registry import MODEL_KEY, ModelRegistry, atomic_write_text

REPO = Path(__file__).resolve().parents[2]


def publish(registry: ModelRegistry, symbol: str, tag: str) -> str:
    staged = registry.stage(symbol)
    (staged.path / "weights.pt").write_bytes(tag.encode())
    return registry.publish(staged, {"tag": tag}).version


def test_publish_list_get(tmp_path: Path) -> None:
    registry = forecast_registry(tmp_path)  # the service's own "how to train it" message
    with pytest.raises(FailedPrecondition, match=r"POST /api/v1/forecast/EURUSD/train"):
        registry.get("EURUSD")
    assert publish(registry, "EURUSD", "a") == "v000001"
    assert publish(registry, "EURUSD", "b") == "v000002"
    versions = registry.list_versions("EURUSD")
    assert [(v.version, v.current, v.metadata["tag"]) for v in versions] == [
        ("v000001", False, "a"),
        ("v000002", True, "b"),
    ]
    current = registry.get("EURUSD")
    assert current.metadata["symbol"] == "EURUSD" and current.created_at.tzinfo is not None
    assert registry.trained_keys() == ["EURUSD"]
    with pytest.raises(NotFound):
        registry.get("EURUSD", "v000009")


def test_rollback_and_pointer_stamp(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    for tag in "abc":
        publish(registry, "GOOG", tag)
    stamp = registry.pointer_stamp("GOOG")
    assert registry.rollback("GOOG").version == "v000002"
    assert registry.current_version("GOOG") == "v000002"
    assert registry.pointer_stamp("GOOG") != stamp  # readers notice with one stat
    assert registry.rollback("GOOG", "v000003").version == "v000003"
    registry.rollback("GOOG", "v000001")
    with pytest.raises(FailedPrecondition, match="no version older"):
        registry.rollback("GOOG")


def test_keep_last_n_never_deletes_the_current_version(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    for tag in "abcde":
        publish(registry, "EURUSD", tag)
    registry.rollback("EURUSD", "v000001")
    removed = registry.prune("EURUSD", keep=2)
    assert removed == ["v000002", "v000003"]
    assert [v.version for v in registry.list_versions("EURUSD")] == ["v000001", "v000004", "v000005"]
    assert not [p for p in (tmp_path / "EURUSD").iterdir() if p.name.startswith(".")]


def test_symbols_are_validated_against_path_tricks(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path)
    for bad in ("../etc", "eurusd", "", "A/B"):
        with pytest.raises(InvalidArgument):
            registry.key_dir(bad)


def test_atomic_write_text_replaces(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write_text(target, "1")
    atomic_write_text(target, "2")
    assert target.read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


_PUBLISHER = """
import sys, os
from pathlib import Path
from services.training.registry import ModelRegistry
registry = ModelRegistry(Path(sys.argv[1]))
payload = os.urandom(4 << 20)
i = 0
while True:
    staged = registry.stage("EURUSD")
    (staged.path / "weights.pt").write_bytes(payload)
    (staged.path / "nhits.json").write_text('{"i": %d}' % i)
    registry.publish(staged, {"i": i, "size": len(payload)})
    registry.prune("EURUSD", 3)
    if i == 0:
        print("published", flush=True)
    i += 1
"""


def assert_consistent(registry: ModelRegistry) -> str:
    current = registry.current_version("EURUSD")
    assert current is not None, "the pointer must always name a complete version"
    for version in registry.list_versions("EURUSD"):
        meta = json.loads((version.path / "metadata.json").read_text())
        assert (version.path / "weights.pt").stat().st_size == meta["size"]
        assert json.loads((version.path / "nhits.json").read_text())["i"] == meta["i"]
    return current


def test_sigkill_while_publishing_never_exposes_a_partial_version(tmp_path: Path) -> None:
    """A publisher is SIGKILLed at random instants (mostly mid-write: it publishes 4 MiB versions
    back to back); after each kill the current version is complete and no partial one is listed."""
    registry = ModelRegistry(tmp_path)
    rng = random.Random(7)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    seen_staging = 0
    for _ in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", _PUBLISHER, str(tmp_path)], stdout=subprocess.PIPE, env=env, cwd=REPO
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"published"
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert_consistent(registry)
        leftovers = [p for p in (tmp_path / "EURUSD").iterdir() if p.name.startswith(".")]
        seen_staging += bool(leftovers)
        registry.clean_staging()
        assert not [p for p in (tmp_path / "EURUSD").iterdir() if p.name.startswith(".")]
    # The kills did land mid-publish at least once (a staging directory was left behind).
    assert seen_staging >= 1


def test_models_not_per_symbol_use_their_name_as_key(tmp_path: Path) -> None:
    registry = ModelRegistry(tmp_path, key=MODEL_KEY, no_model=lambda key: f"train {key} first")
    with pytest.raises(FailedPrecondition, match="train tcn first") as info:
        registry.get("tcn")
    assert info.value.metadata == {"model": "tcn"}
    assert publish(registry, "tcn", "a") == "v000001"
    assert registry.trained_keys() == ["tcn"] and registry.get("tcn").metadata["model"] == "tcn"
    with pytest.raises(InvalidArgument) as bad:
        registry.get("EURUSD")  # upper case is a symbol, not a model name
    assert bad.value.violations[0].field == "model"
