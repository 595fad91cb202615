"""deploy/backup.sh + deploy/restore.sh: round trips, and refusal of damaged or doctored archives.

The local layout runs for real (a temp KITRADING_HOME, the embedded test PostgreSQL for the database);
the compose layout runs against a fake `docker` on PATH that keeps "volumes" in folders, so the
script's own logic (what is copied, stopped, started, dumped, restored) is exercised without an engine.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import asyncpg
import pytest

from tests.deploy.conftest import DEPLOY

BACKUP = DEPLOY / "backup.sh"
RESTORE = DEPLOY / "restore.sh"

SAMPLE = {
    "models/forecast/EURUSD/v3/model.pt": os.urandom(200_000),
    "models/forecast/EURUSD/v3/meta.json": b'{"horizon": 24}',
    "models/pattern/tcn/weights with space.bin": os.urandom(5000),
    "models/regime/EURUSD/hmm.pkl": b"hmm",
    "rag/index.faiss": os.urandom(10_000),
    "rag/docs/0001.json": b'{"text": "ECB"}',
    "forecast/event_monitor.json": b'{"last_event_id": 42}',
}


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file below root (the backups folder left out)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "backups" not in p.relative_to(root).parts
    }


def make_home(root: Path) -> Path:
    home = root / "home"
    for rel, data in SAMPLE.items():
        path = home / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return home


def run(script: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def script_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KITRADING_", "TIMESCALE_"))}
    env.update({"KITRADING_HOME": str(home), "PYTHON": sys.executable}, **extra)
    return env


def backup(home: Path, *args: str, **extra: str) -> Path:
    result = run(BACKUP, *args, env=script_env(home, **extra))
    assert result.returncode == 0, result.stderr
    archive = Path(result.stdout.strip().splitlines()[-1])
    assert archive.is_file()
    return archive


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {
            m.name.split("/", 1)[1]: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }


def repack(
    archive: Path, target: Path, change: dict[str, bytes | None], *, symlink: str | None = None
) -> Path:
    """A copy of `archive` with some members replaced (bytes), removed (None) or added."""
    with tarfile.open(archive) as tar:
        top = tar.getmembers()[0].name.split("/")[0]
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    for rel, data in change.items():
        if data is None:
            files.pop(f"{top}/{rel}")
        else:
            files[f"{top}/{rel}"] = data
    with tarfile.open(target, "w:gz") as out:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
        if symlink:
            link = tarfile.TarInfo(f"{top}/volumes/rag-index/escape")
            link.type = tarfile.SYMTYPE
            link.linkname = symlink
            out.addfile(link)
    return target


# ---- local layout --------------------------------------------------------------------------------


def test_local_round_trip(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    before = snapshot(home)
    archive = backup(home, "--no-database")

    assert archive.parent == home / "backups"
    assert archive.name.startswith("kitrading-backup-") and archive.name.endswith("Z.tar.gz")
    sidecar = Path(f"{archive}.sha256").read_text().split()[0]
    assert sidecar == hashlib.sha256(archive.read_bytes()).hexdigest()
    content = members(archive)
    manifest = json.loads(content["manifest.json"])
    assert manifest["mode"] == "local" and manifest["database"] == "not requested"
    assert set(manifest["components"]) == {
        "forecast-models",
        "pattern-models",
        "regime-models",
        "rag-index",
        "forecast-state",
    }
    lines = content["MANIFEST.sha256"].decode().splitlines()
    assert len(lines) == len(SAMPLE) == manifest["files"]
    for line in lines:
        digest, rel = line.split("  ", 1)
        assert hashlib.sha256(content[rel]).hexdigest() == digest

    # Lose a model, change the state, leave a stray file: restore brings back exactly the backup.
    shutil.rmtree(home / "models" / "forecast")
    (home / "forecast" / "event_monitor.json").write_text("{}")
    (home / "rag" / "stray.tmp").write_text("not in the backup")
    (home / "unrelated.txt").write_text("outside every component")
    result = run(RESTORE, "--yes", str(archive), env=script_env(home))
    assert result.returncode == 0, result.stderr
    after = snapshot(home)
    assert after.pop("unrelated.txt")  # components are replaced; nothing else is touched
    assert after == before
    assert not list(home.rglob("*.restore-*")), "no swap leftovers"


def test_only_restores_the_named_component(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    archive = backup(home, "--no-database")
    (home / "rag" / "index.faiss").write_bytes(b"new index")
    (home / "models" / "regime" / "EURUSD" / "hmm.pkl").write_bytes(b"new hmm")
    result = run(RESTORE, "--yes", "--only", "regime-models", str(archive), env=script_env(home))
    assert result.returncode == 0, result.stderr
    assert (home / "models" / "regime" / "EURUSD" / "hmm.pkl").read_bytes() == b"hmm"
    assert (home / "rag" / "index.faiss").read_bytes() == b"new index"


def test_verify_only_changes_nothing(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    archive = backup(home, "--no-database")
    (home / "rag" / "index.faiss").write_bytes(b"changed after the backup")
    before = snapshot(home)
    result = run(RESTORE, "--verify-only", str(archive), env=script_env(home))
    assert result.returncode == 0, result.stderr
    assert "intact" in result.stderr
    assert snapshot(home) == before


def test_restore_without_terminal_needs_yes(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    archive = backup(home, "--no-database")
    result = subprocess.run(
        ["bash", str(RESTORE), str(archive)],
        env=script_env(home),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0 and "--yes" in result.stderr


def assert_refused(home: Path, archive: Path, reason: str) -> None:
    before = snapshot(home)
    result = run(RESTORE, "--yes", str(archive), env=script_env(home))
    assert result.returncode != 0
    assert "REFUSED" in result.stderr and reason in result.stderr, result.stderr
    assert "nothing was changed" in result.stderr
    assert snapshot(home) == before


def test_corrupted_archive_is_refused(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    archive = backup(home, "--no-database")
    damaged = tmp_path / archive.name
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    shutil.rmtree(home / "models" / "pattern")  # a restore would bring it back: it must not happen
    assert_refused(home, damaged, "not a readable archive")


def test_archive_not_matching_its_sidecar_is_refused(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    archive = backup(home, "--no-database")
    Path(f"{archive}.sha256").write_text("0" * 64 + f"  {archive.name}\n")
    assert_refused(home, archive, "does not match")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"volumes/rag-index/index.faiss": b"doctored"}, "checksums do not match"),
        ({"volumes/rag-index/docs/0001.json": None}, "checksums do not match"),
        ({"volumes/rag-index/extra.bin": b"smuggled in"}, "checksums do not match"),
        ({"MANIFEST.sha256": None}, "no MANIFEST.sha256"),
    ],
    ids=["changed-file", "missing-file", "extra-file", "no-manifest"],
)
def test_doctored_archive_is_refused(tmp_path: Path, change: dict[str, bytes | None], reason: str) -> None:
    home = make_home(tmp_path)
    archive = backup(home, "--no-database")
    (home / "rag" / "index.faiss").write_bytes(b"current")
    assert_refused(home, repack(archive, tmp_path / archive.name, change), reason)


def test_links_in_an_archive_are_refused(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    archive = backup(home, "--no-database")
    assert_refused(home, repack(archive, tmp_path / archive.name, {}, symlink="/etc"), "not plain files")


def test_not_a_backup_is_refused(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, "w:gz") as tar:
        info = tarfile.TarInfo("something/file.txt")
        tar.addfile(info, io.BytesIO(b""))
    assert_refused(home, other, "not a kitrading backup")
    plain = tmp_path / "plain.tar.gz"
    plain.write_bytes(gzip.compress(b"just text"))
    assert_refused(home, plain, "not a readable archive")


def test_database_left_out_when_there_is_none(tmp_path: Path) -> None:
    home = make_home(tmp_path)  # no KITRADING_DATABASE_URL, no TIMESCALE_HOST, no embedded pgdata
    archive = backup(home)
    manifest = json.loads(members(archive)["manifest.json"])
    assert manifest["database"].startswith("skipped")
    assert not any(name.startswith("database/") for name in members(archive))
    result = run(BACKUP, "--require-database", env=script_env(home))
    assert result.returncode != 0
    assert not (home / "postgres").exists(), "a backup never creates a database"


async def test_database_round_trip(tmp_path: Path, database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "CREATE TABLE symbols (name text PRIMARY KEY, active boolean);"
            "INSERT INTO symbols VALUES ('EURUSD', true), ('GBPUSD', false)"
        )
    finally:
        await conn.close()
    home = make_home(tmp_path)
    archive = backup(home, "--require-database", KITRADING_DATABASE_URL=database_url)
    content = members(archive)
    assert content["database/kitrading.dump"].startswith(b"PGDMP"), "pg_dump custom format"
    assert json.loads(content["manifest.json"])["database"] == "included"

    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE symbols SET active = NOT active; CREATE TABLE junk (x int)")
    finally:
        await conn.close()
    result = run(RESTORE, "--yes", str(archive), env=script_env(home, KITRADING_DATABASE_URL=database_url))
    assert result.returncode == 0, result.stderr
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT name, active FROM symbols ORDER BY name")
        junk = await conn.fetchval("SELECT to_regclass('junk')")
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [("EURUSD", True), ("GBPUSD", False)]
    assert junk is None, "the database is recreated, not merged"


# ---- compose layout, against a fake docker ---------------------------------------------------------

FAKE_DOCKER = r"""
import os, shutil, subprocess, sys
from pathlib import Path

root = Path(os.environ["FAKE_DOCKER_ROOT"])
args = sys.argv[1:]
with open(root / "calls.log", "a") as log:
    log.write(" ".join(args) + "\n")
volumes = root / "volumes"
if args[:2] == ["volume", "inspect"]:
    sys.exit(0 if (volumes / args[2]).is_dir() else 1)
if args[:2] == ["volume", "create"]:
    (volumes / args[2]).mkdir(parents=True, exist_ok=True)
    sys.exit(0)
if args[0] == "run":
    rest = args[1:]
    mount = None
    while rest[0].startswith("-"):
        if rest[0] == "-v":
            mount = rest[1].split(":")
            rest = rest[2:]
        else:
            rest = rest[1:]
    image, command = rest[0], rest[1:]
    assert image == "busybox:1.36", image
    path = str(volumes / mount[0])
    command = [c.replace("/data", path).replace("chown -R", "true") for c in command]
    sys.exit(subprocess.run(command).returncode)
if args[0] == "compose":
    if "run" in args and "dump" in args:
        sys.stdout.buffer.write(b"PGDMP-fake")
    if "run" in args and "restore" in args:
        host = args[args.index("-v") + 1].split(":")[0]
        shutil.copy(Path(host) / "kitrading.dump", root / "restored.dump")
    sys.exit(0)
sys.exit(f"fake docker: unexpected {args}")
"""


def fake_docker(tmp_path: Path) -> dict[str, str]:
    root = tmp_path / "docker"
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "docker"
    script.write_text(f"#!{sys.executable}\n{FAKE_DOCKER}")
    script.chmod(0o755)
    for rel, data in SAMPLE.items():
        top, _, rest = rel.partition("/")
        component = {"models": None, "rag": "rag-index", "forecast": "forecast-state"}[top]
        if component is None:
            kind, _, rest = rest.partition("/")
            component = f"{kind}-models"
        path = root / "volumes" / f"kitrading-{component}" / rest
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return {"FAKE_DOCKER_ROOT": str(root), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_compose_round_trip_with_fake_docker(tmp_path: Path) -> None:
    extra = fake_docker(tmp_path)
    root = Path(extra["FAKE_DOCKER_ROOT"])
    volumes = root / "volumes"
    before = snapshot(volumes)
    out = tmp_path / "out"
    archive = backup(tmp_path / "unused-home", "--compose", "--stop", "--output", str(out), **extra)
    content = members(archive)
    assert content["database/kitrading.dump"] == b"PGDMP-fake"
    manifest = json.loads(content["manifest.json"])
    assert manifest["mode"] == "compose" and manifest["absent"] == []
    calls = (root / "calls.log").read_text().splitlines()
    compose_file = str(DEPLOY / "docker-compose.yml")
    writers = "forecast pattern rag regime"
    assert f"compose -f {compose_file} stop {writers}" in calls
    assert calls.index(f"compose -f {compose_file} stop {writers}") < calls.index(
        f"compose -f {compose_file} start {writers}"
    )
    assert any(c.startswith(f"compose -f {compose_file} run --rm --no-deps -T data") for c in calls)

    shutil.rmtree(volumes)
    volumes.mkdir()
    (root / "calls.log").unlink()
    result = run(
        RESTORE, "--compose", "--yes", str(archive), env=script_env(tmp_path / "unused-home", **extra)
    )
    assert result.returncode == 0, result.stderr
    assert snapshot(volumes) == before
    assert (root / "restored.dump").read_bytes() == b"PGDMP-fake"
    calls = (root / "calls.log").read_text().splitlines()
    everything = "data forecast pattern regime embedder rag llm watchdog"
    order = [
        f"compose -f {compose_file} stop {everything}",
        f"compose -f {compose_file} up -d --wait timescaledb",
        f"compose -f {compose_file} start {everything}",
    ]
    assert [c for c in calls if c in order] == order


# ---- style -----------------------------------------------------------------------------------------


def test_scripts_are_strict_and_shellcheck_clean() -> None:
    scripts = [
        BACKUP,
        RESTORE,
        DEPLOY / "backup_lib.sh",
        DEPLOY / "timescaledb.sh",
        DEPLOY / "apt_install.sh",
        DEPLOY / "chromium.sh",
    ]
    for script in (BACKUP, RESTORE, DEPLOY / "timescaledb.sh"):
        assert "set -euo pipefail" in script.read_text()
        assert os.access(script, os.X_OK), f"{script.name} is executable"
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed")
    result = subprocess.run(
        [shellcheck, "-x", *map(str, scripts)], cwd=DEPLOY.parent, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout
