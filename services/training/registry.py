"""Versioned model store of every trained model: `<root>/<KEY>/<version>/` plus a `current` pointer
per key. A key is a symbol for per-symbol models (forecast, regime) or the model's name (pattern).

Layout::

    <root>/EURUSD/v000001/{weights.pt, nhits.json, metadata.json}
    <root>/EURUSD/v000002/...
    <root>/EURUSD/current             # text: "v000002"
    <root>/EURUSD/.staging-<pid>-<id>  # a version being written (never listed)

Publishing is crash safe: files are written into a hidden staging directory, fsynced (files, then
the directory), the directory is renamed to its version name (atomic on one filesystem) and the
parent fsynced; only then is `current` switched, by writing `current.tmp`, fsyncing it and
`os.replace`-ing it over `current`. A process killed at any point leaves either the previous
version serving and at most a hidden staging directory (removed by `clean_staging`), or the new
version complete. Deleting a version renames it to a hidden `.trash-*` name first. Keys become
directory names, so a `KeyRule` validates every one on the way in.

Readers detect a new version by `os.stat` of the pointer (`pointer_stamp`): `os.replace` gives it a
new inode, so a changed (inode, mtime, size) triple means "reload".
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound

POINTER = "current"
METADATA = "metadata.json"
_VERSION = re.compile(r"^v(\d{6,})$")

PointerStamp = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class KeyRule:
    """What a registry key may look like, and the request field named when one is bad."""

    field: str
    pattern: re.Pattern[str]
    hint: str

    def check(self, key: str) -> str:
        """`key` when valid; InvalidArgument(field) otherwise."""
        if not self.pattern.fullmatch(key or ""):
            raise InvalidArgument(self.field, self.hint)
        return key


#: Tickers: the key of per-symbol models.
SYMBOL_KEY = KeyRule(
    "symbol",
    re.compile(r"^[A-Z0-9][A-Z0-9._-]{0,31}$"),
    "must match ^[A-Z0-9][A-Z0-9._-]*$ (upper case, at most 32 characters)",
)
#: Model names (`tcn`, `minilm`): the key of models that are not per symbol.
MODEL_KEY = KeyRule(
    "model",
    re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$"),
    "must match ^[a-z0-9][a-z0-9._-]*$ (at most 32 characters)",
)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically: write a temp file aside, fsync, os.replace, fsync dir."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """One published version of a key's model."""

    key: str
    version: str
    path: Path
    metadata: dict[str, Any]
    current: bool

    @property
    def created_at(self) -> datetime:
        raw = self.metadata.get("created_at")
        if raw:
            return datetime.fromisoformat(raw)
        return datetime.fromtimestamp(self.path.stat().st_mtime, tz=UTC)


def version_key(version: ModelVersion) -> list[int]:
    """The page key of a key's versions (`runtime.pagination.paginate`, listed newest first)."""
    return [int(version.version[1:])]


@dataclass(slots=True)
class StagedVersion:
    """A version being written: put files into `path`, then `ModelRegistry.publish` it."""

    key: str
    path: Path


class ModelRegistry:
    """Versioned model directories per key under `root` (see the module docstring).

    `no_model(key)` is the FailedPrecondition message for a key without a model: it says how to
    train one."""

    def __init__(
        self,
        root: Path,
        *,
        key: KeyRule = SYMBOL_KEY,
        no_model: Callable[[str], str] = lambda key: f"no model for {key} yet: train it first",
    ) -> None:
        self.root = Path(root)
        self.rule = key
        self.no_model = no_model

    def check_key(self, key: str) -> str:
        return self.rule.check(key)

    # ---- paths ----------------------------------------------------------------------------------

    def key_dir(self, key: str) -> Path:
        return self.root / self.rule.check(key)

    def pointer_path(self, key: str) -> Path:
        return self.key_dir(key) / POINTER

    # ---- reading --------------------------------------------------------------------------------

    def trained_keys(self) -> list[str]:
        """Keys that have a current version, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if self.rule.pattern.fullmatch(p.name) and (p / POINTER).is_file()
        )

    def pointer_stamp(self, key: str) -> PointerStamp | None:
        """(inode, mtime_ns, size) of the `current` pointer, or None: one `stat`, for change checks."""
        try:
            st = os.stat(self.pointer_path(key))
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def current_version(self, key: str) -> str | None:
        try:
            name = self.pointer_path(key).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return name if _VERSION.fullmatch(name) and (self.key_dir(key) / name).is_dir() else None

    def _version_names(self, key: str) -> list[str]:
        folder = self.key_dir(key)
        if not folder.is_dir():
            return []
        names = [p.name for p in folder.iterdir() if p.is_dir() and _VERSION.fullmatch(p.name)]
        return sorted(names, key=lambda n: int(n[1:]))

    def _read(self, key: str, version: str, current: str | None) -> ModelVersion:
        path = self.key_dir(key) / version
        try:
            metadata = json.loads((path / METADATA).read_text(encoding="utf-8"))
        except FileNotFoundError:
            metadata = {}
        return ModelVersion(key, version, path, metadata, version == current)

    def list_versions(self, key: str) -> list[ModelVersion]:
        """All published versions, oldest first."""
        current = self.current_version(key)
        return [self._read(key, name, current) for name in self._version_names(key)]

    def newest_first(self, key: str) -> list[ModelVersion]:
        """All published versions, newest first (the order the APIs list them in; `version_key`)."""
        return list(reversed(self.list_versions(key)))

    def get(self, key: str, version: str | None = None) -> ModelVersion:
        """A version (default: the current one). FailedPrecondition when the key has no model,
        NotFound for an unknown version."""
        current = self.current_version(key)
        if version is None:
            if current is None:
                raise FailedPrecondition(
                    self.no_model(key), reason="NO_MODEL", metadata={self.rule.field: key}
                )
            version = current
        if not _VERSION.fullmatch(version) or not (self.key_dir(key) / version).is_dir():
            raise NotFound(f"model version {version!r} of {key} not found", reason="MODEL_VERSION_NOT_FOUND")
        return self._read(key, version, current)

    # ---- writing --------------------------------------------------------------------------------

    def stage(self, key: str) -> StagedVersion:
        """Create a hidden staging directory for a new version of `key`."""
        folder = self.key_dir(key)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f".staging-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        path.mkdir()
        return StagedVersion(key, path)

    def publish(
        self, staged: StagedVersion, metadata: dict[str, Any], *, make_current: bool = True
    ) -> ModelVersion:
        """Make a staged version visible and (by default) current; returns it.

        Writes `metadata.json` (adding `version` and `created_at`), fsyncs every file and the
        directory, renames it to the next free `vNNNNNN` and switches the pointer.
        """
        folder = self.key_dir(staged.key)
        for _ in range(100):
            names = self._version_names(staged.key)
            number = int(names[-1][1:]) + 1 if names else 1
            version = f"v{number:06d}"
            meta = {**metadata, self.rule.field: staged.key, "version": version}
            meta.setdefault("created_at", datetime.now(UTC).isoformat())
            (staged.path / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
            for file in staged.path.rglob("*"):
                if file.is_file():
                    fsync_file(file)
            fsync_dir(staged.path)
            try:
                os.rename(staged.path, folder / version)  # fails if a concurrent publisher took it
            except OSError:
                continue
            fsync_dir(folder)
            if make_current:
                self.set_current(staged.key, version)
            return self._read(staged.key, version, self.current_version(staged.key))
        raise RuntimeError(f"could not allocate a version name for {staged.key}")

    def discard(self, staged: StagedVersion) -> None:
        shutil.rmtree(staged.path, ignore_errors=True)

    def set_current(self, key: str, version: str) -> None:
        """Atomically point `current` at an existing version."""
        if not (self.key_dir(key) / version).is_dir():
            raise NotFound(f"model version {version!r} of {key} not found", reason="MODEL_VERSION_NOT_FOUND")
        atomic_write_text(self.pointer_path(key), version + "\n")

    def rollback(self, key: str, version: str | None = None) -> ModelVersion:
        """Serve `version`, or by default the version published before the current one."""
        if version is None:
            current = self.current_version(key)
            if current is None:
                raise FailedPrecondition(
                    self.no_model(key), reason="NO_MODEL", metadata={self.rule.field: key}
                )
            older = [n for n in self._version_names(key) if int(n[1:]) < int(current[1:])]
            if not older:
                raise FailedPrecondition(
                    f"{key} has no version older than {current} to roll back to", reason="NO_OLDER_VERSION"
                )
            version = older[-1]
        self.get(key, version)
        self.set_current(key, version)
        return self.get(key, version)

    def prune(self, key: str, keep: int) -> list[str]:
        """Delete all but the newest `keep` versions (never the current one); returns the removed."""
        keep = max(1, keep)
        current = self.current_version(key)
        names = self._version_names(key)
        doomed = [n for n in names[: max(0, len(names) - keep)] if n != current]
        for name in doomed:
            self._remove(key, name)
        return doomed

    def delete_version(self, key: str, version: str) -> None:
        if version == self.current_version(key):
            raise FailedPrecondition(
                f"{key} {version} is the current version; roll back first", reason="VERSION_IN_USE"
            )
        self.get(key, version)
        self._remove(key, version)

    def _remove(self, key: str, version: str) -> None:
        folder = self.key_dir(key)
        trash = folder / f".trash-{version}-{uuid.uuid4().hex[:8]}"
        os.rename(folder / version, trash)
        fsync_dir(folder)
        shutil.rmtree(trash, ignore_errors=True)

    def clean_staging(self) -> list[Path]:
        """Remove staging/trash directories left by dead processes (a killed training worker)."""
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        for folder in self.root.iterdir():
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                if entry.name.startswith(".trash-") or (
                    entry.name.startswith(".staging-") and not _pid_alive(_staging_pid(entry.name))
                ):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry)
                elif entry.name.startswith(f".{POINTER}.") and entry.name.endswith(".tmp"):
                    with contextlib.suppress(FileNotFoundError):
                        entry.unlink()
                    removed.append(entry)
        return removed


def _staging_pid(name: str) -> int:
    try:
        return int(name.split("-")[1])
    except (IndexError, ValueError):
        return -1


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped) still answers kill(0); treat it as dead.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True
