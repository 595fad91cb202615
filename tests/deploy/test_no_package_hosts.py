"""The repository names no package registry or download host: everything is installed by package
name through the ordinary clients (pip's default index, apt's configured sources, npm's registry).
A user's own mirror or torch index is a setting (deploy/.env), never a default in the tree."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Hosts of package registries and their download mirrors (spelt in parts so this file is not a hit).
HOSTS = [
    r"pypi\.org",
    r"pypi\.python\.org",
    r"files\.pythonhosted\.org",
    r"download\.pytorch\.org",
    r"deb\.debian\.org",
    r"security\.debian\.org",
    r"ftp\.debian\.org",
    r"snapshot\.debian\.org",
    r"registry\.npmjs\.org",
    r"registry\.yarnpkg\.com",
    r"conda\.anaconda\.org",
]
PATTERN = re.compile("|".join(HOSTS), re.IGNORECASE)


def test_no_tracked_file_names_a_package_host() -> None:
    files = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True)
        .stdout.decode()
        .split("\0")
    )
    hits = []
    for name in filter(None, files):
        path = ROOT / name
        if path == Path(__file__).resolve() or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary (pictures, descriptor sets)
        for number, line in enumerate(text.splitlines(), 1):
            if PATTERN.search(line):
                hits.append(f"{name}:{number}: {line.strip()[:120]}")
    assert not hits, "package hosts named in the repository:\n" + "\n".join(hits)
