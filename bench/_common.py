"""What every benchmark records beside its numbers: the command, the commit, the machine, its load.

A results file is produced whole by one run of one script. `Provenance.start()` is called
before the first measurement and `finish()` after the last, so the file says how busy the
machine was while the numbers were taken (load average at both ends, and the CPU time other
processes used during the run, read from /proc/stat).

    prov = Provenance.start()
    ... measure ...
    write_result(args.out, {"images_per_s": ...}, prov)

Every script under bench/ takes `--quick` (a seconds-long run on a few products, for the
test suite, so a benchmark cannot rot) and `--out PATH` (where to write; quick runs never
write to bench/results unless told).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "products"
RESULTS = ROOT / "bench" / "results"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies over all CPUs, or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    vals = [float(v) for v in fields[:8]]  # guest time is already inside user/nice
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0.0)
    return sum(vals) - idle, sum(vals)


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    out: dict[str, Any] = {"cpu": cpu or platform.processor(), "cpu_count": os.cpu_count(), "memory_gib": mem_gib,
                           "python": platform.python_version(), "platform": platform.platform()}
    try:
        import torch

        out["torch"] = torch.__version__
        out["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return out


@dataclass
class Provenance:
    command: str
    commit: str
    dirty: bool
    started: float
    load_start: tuple[float, float, float]
    cpu_start: tuple[float, float] | None
    self_cpu_start: float
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls) -> Provenance:
        exe = Path(sys.executable)
        exe_text = str(exe.relative_to(ROOT)) if exe.is_relative_to(ROOT) else str(exe)
        cmd = " ".join(shlex.quote(a) for a in [exe_text, *sys.argv])
        # results written by an earlier benchmark of the same run do not make the code dirty
        status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results")
        return cls(command=cmd, commit=_git("rev-parse", "HEAD"), dirty=bool(status), started=time.time(),
                   load_start=os.getloadavg(), cpu_start=_cpu_times(), self_cpu_start=_self_cpu())

    def finish(self) -> dict[str, Any]:
        wall = time.time() - self.started
        end, mine, load_end = _cpu_times(), _self_cpu() - self.self_cpu_start, os.getloadavg()
        out: dict[str, Any] = {
            "command": self.command,
            "git_commit": self.commit,
            "git_dirty": self.dirty,
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "wall_seconds": round(wall, 1),
            "machine": machine(),
            "load_average_at_start": [round(x, 2) for x in self.load_start],
            "load_average_at_end": [round(x, 2) for x in load_end],
        }
        if self.cpu_start and end and wall >= 1.0:
            ncpu = os.cpu_count() or 1
            hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
            busy = (end[0] - self.cpu_start[0]) / hz
            # CPU-seconds other processes used while this ran, as a share of the machine.
            out["other_processes_cpu_share"] = round(max(0.0, busy - mine) / max(wall * ncpu, 1e-9), 3)
        out.update(self.extra)
        return out


def write_result(path: str | Path, result: dict[str, Any], prov: Provenance) -> Path:
    """Write `result` with its provenance under "run"; the file is replaced whole, never merged."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"run": prov.finish(), **result}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
