"""Shared helpers for the deployment tests: the compose files as data, the deploy/ paths.

No Docker engine or Kubernetes cluster is needed: the files are checked statically against the
service registry, and the backup scripts run in their local mode (plus a fake `docker` on PATH).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
COMPOSE_CPU = DEPLOY / "docker-compose.cpu.yml"


class Reset:
    """Compose's `!reset` tag: remove what earlier files set."""

    def __repr__(self) -> str:
        return "!reset"


class Override:
    """Compose's `!override` tag: replace (not merge) what earlier files set."""

    def __init__(self, value: Any) -> None:
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus compose's two merge tags."""


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
    return Reset()


def _override(loader: yaml.SafeLoader, node: yaml.Node) -> Override:
    if isinstance(node, yaml.MappingNode):
        return Override(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Override(loader.construct_sequence(node, deep=True))
    return Override(loader.construct_scalar(node))  # type: ignore[arg-type]


ComposeLoader.add_constructor("!reset", _reset)
ComposeLoader.add_constructor("!override", _override)


def load_compose(path: Path) -> dict[str, Any]:
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=ComposeLoader)
    assert isinstance(data, dict)
    return data


def merge(base: Any, override: Any) -> Any:
    """How `docker compose -f a -f b` combines two files (mappings merge, sequences and scalars
    replace; the CLI appends some sequences, which these tests do not depend on)."""
    if isinstance(override, Reset):
        return None
    if isinstance(override, Override):
        return override.value
    if isinstance(base, dict) and isinstance(override, dict):
        result = dict(base)
        for key, value in override.items():
            merged = merge(base.get(key), value)
            if merged is None and isinstance(value, Reset):
                result.pop(key, None)
            else:
                result[key] = merged
        return result
    return override


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    return load_compose(COMPOSE)


@pytest.fixture(scope="session")
def compose_cpu(compose: dict[str, Any]) -> dict[str, Any]:
    merged = merge(compose, load_compose(COMPOSE_CPU))
    assert isinstance(merged, dict)
    return merged


def bash_lib(expression: str) -> str:
    """Evaluate `expression` in bash after sourcing deploy/backup_lib.sh; its stdout, stripped."""
    result = subprocess.run(
        ["bash", "-c", f'source "{DEPLOY / "backup_lib.sh"}"; {expression}'],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()
