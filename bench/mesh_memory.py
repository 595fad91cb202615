"""Memory of the whole mesh at rest: `kitrading up` on its embedded defaults, every implemented service.

    .venv/bin/python -m bench.mesh_memory [--out FILE.json] [--settle 90]

Starts the mesh in a fresh `$KITRADING_HOME` (embedded PostgreSQL, Envoy, every service the registry
marks implemented), waits until every `/<prefix>/health` is 200 and no service is training (the
first-start trainings of forecast and regime end and their workers exit after their idle time), then
sums the resident memory (RSS, and PSS where the kernel reports it: shared pages split among the
processes that map them) of the launcher's whole process tree and the embedded PostgreSQL's.
Target (the brief): under 3 GB.

To keep the run short the forecast's first training uses few NHITS steps (`NHITS_MAX_STEPS=30`),
which does not change what a serving process holds; everything else is the embedded default.
The floor beside the target: a bare Python process with only the standard library.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from kitrading import mesh
from tests.e2e.mesh import start_mesh

TARGET_BYTES = 3 * 1024**3
ENV = {
    "NHITS_MAX_STEPS": "30",
    "KITRADING_FORECAST_WORKER_IDLE_SECONDS": "5",
    "KITRADING_REGIME_WORKER_IDLE_SECONDS": "5",
}


def _memory(process: psutil.Process) -> tuple[int, int]:
    try:
        full = process.memory_full_info()
        return int(full.rss), int(getattr(full, "pss", full.rss))
    except (psutil.AccessDenied, psutil.ZombieProcess):
        info = process.memory_info()
        return int(info.rss), int(info.rss)


def tree(root: psutil.Process) -> list[dict[str, Any]]:
    rows = []
    for p in [root, *root.children(recursive=True)]:
        try:
            rss, pss = _memory(p)
            name = " ".join(p.cmdline()[1:4]) or p.name()
        except psutil.NoSuchProcess:
            continue
        rows.append({"pid": p.pid, "name": name, "rss": rss, "pss": pss})
    return rows


def postgres(home: Path) -> list[dict[str, Any]]:
    """The embedded PostgreSQL's processes (it daemonises: not in the launcher's tree)."""
    rows = []
    data_dir = str(home / "postgres")
    for p in psutil.process_iter(["cmdline"]):
        cmdline = p.info.get("cmdline") or []
        if any(data_dir in part for part in cmdline):
            rows.extend(tree(p)[:1])
            for child in p.children(recursive=True):
                rss, pss = _memory(child)
                rows.append({"pid": child.pid, "name": "postgres " + child.name(), "rss": rss, "pss": pss})
    return rows


def training(running: Any) -> bool:
    for path in ("/api/v1/forecast/training/progress", "/api/v1/regime/status"):
        try:
            body = httpx.get(f"{running.gateway}{path}", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return True
        if body.get("training") or body.get("trainingJob") or body.get("activeJobs"):
            return True
    return False


def bare_python() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    time.sleep(1.0)
    rss = psutil.Process(proc.pid).memory_info().rss
    proc.kill()
    proc.wait()
    return int(rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--settle", type=float, default=30.0, help="seconds at rest before measuring")
    parser.add_argument("--timeout", type=float, default=1200.0)
    args = parser.parse_args()
    services = [s for s in mesh.SERVICES if s.implemented]
    home = Path(tempfile.mkdtemp(prefix="kitrading-memory-"))
    running = start_mesh(home, [s.name for s in services], ENV)
    try:
        started = time.monotonic()
        for s in services:
            running.wait_healthy(s.prefix, timeout_s=args.timeout)
        while training(running) or any(
            "services.training.worker" in " ".join(p.cmdline())
            for p in psutil.Process(running.process.pid).children(recursive=True)
        ):
            if time.monotonic() - started > args.timeout:
                raise TimeoutError("the mesh never came to rest")
            time.sleep(2.0)
        time.sleep(args.settle)
        rows = tree(psutil.Process(running.process.pid)) + postgres(home)
    finally:
        running.stop()
    total_rss, total_pss = sum(r["rss"] for r in rows), sum(r["pss"] for r in rows)
    floor = bare_python()
    result = {
        "services": [s.name for s in services],
        "processes": rows,
        "total_rss": total_rss,
        "total_pss": total_pss,
        "bare_python_rss": floor,
        "target_bytes": TARGET_BYTES,
        "met": total_pss < TARGET_BYTES,
    }
    mib = 1024**2
    print("| process | RSS MiB | PSS MiB |\n|---|---|---|")
    for r in sorted(rows, key=lambda r: -r["pss"]):
        print(f"| {r['name']} | {r['rss'] / mib:.0f} | {r['pss'] / mib:.0f} |")
    print(f"| **total** ({len(rows)} processes) | {total_rss / mib:.0f} | {total_pss / mib:.0f} |")
    print(
        f"\ntarget: under {TARGET_BYTES / mib:.0f} MiB at rest -> {'met' if result['met'] else 'MISSED'} "
        f"(PSS); floor: a bare Python process {floor / mib:.0f} MiB RSS"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
