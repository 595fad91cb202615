"""The repository names no package registry or download host: everything is installed by package
name through the ordinary clients (pip's default index, apt's configured sources, npm's registry).
A user's own mirror or torch index is a setting (deploy/.env), never a default in the tree."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Hosts of package registries and their download mirrors, as their dot-separated labels (so that
#: this file names none of them itself; one label is split as well, for the same reason).
HOSTS = [
    ("pypi", "org"),
    ("pypi", "python", "org"),
    ("files", "python" + "hosted", "org"),
    ("download", "pytorch", "org"),
    ("deb", "debian", "org"),
    ("security", "debian", "org"),
    ("ftp", "debian", "org"),
    ("snapshot", "debian", "org"),
    ("registry", "npmjs", "org"),
    ("registry", "yarnpkg", "com"),
    ("conda", "anaconda", "org"),
]
PATTERN = re.compile("|".join(r"\.".join(labels) for labels in HOSTS), re.IGNORECASE)


def test_no_tracked_file_names_a_package_host() -> None:
    files = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True)
        .stdout.decode()
        .split("\0")
    )
    hits = []
    for name in filter(None, files):
        path = ROOT / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary (pictures, descriptor sets)
        for number, line in enumerate(text.splitlines(), 1):
            if PATTERN.search(line):
                hits.append(f"{name}:{number}: {line.strip()[:120]}")
    assert not hits, "package hosts named in the repository:\n" + "\n".join(hits)
