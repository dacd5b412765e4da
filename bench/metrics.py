"""What the runner samples: the machine, versions, CPU by process group, RSS, the outbox backlog."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

TICK = os.sysconf("SC_CLK_TCK")


# --- the machine and the versions ---------------------------------------------------------------


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    meminfo = Path("/proc/meminfo").read_text()
    mem_kb = int(re.search(r"^MemTotal:\s*(\d+)", meminfo, re.M).group(1))
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "kernel": platform.release(),
        "os": _os_name(),
    }


def _os_name() -> str:
    with contextlib.suppress(OSError):
        text = Path("/etc/os-release").read_text()
        found = re.search(r'^PRETTY_NAME="?([^"\n]+)', text, re.M)
        if found:
            return found.group(1)
    return platform.platform()


def versions(conn: psycopg.Connection, redis_client) -> dict:
    def dist(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "-"

    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    wrk_version = (wrk.stdout + wrk.stderr).split("Copyright")[0].strip()
    return {
        "python": platform.python_version(),
        "django": dist("Django"),
        "djangorestframework": dist("djangorestframework"),
        "celery": dist("celery"),
        "kombu": dist("kombu"),
        "psycopg": dist("psycopg"),
        "gunicorn": dist("gunicorn"),
        "postgresql": conn.execute("SHOW server_version").fetchone()[0],
        "redis": redis_client.info("server")["redis_version"],
        "wrk": wrk_version,
        "py-spy": dist("py-spy"),
        "matplotlib": dist("matplotlib"),
    }


def code_state(root: Path) -> dict:
    """The commit measured, and any uncommitted change to the production code."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.strip()

    dirty = git(
        "status",
        "--porcelain",
        "--",
        "allocation",
        "readmodels",
        "notifications",
        "config",
        "requirements.txt",
    )
    return {
        "commit": git("rev-parse", "HEAD"),
        "subject": git("log", "-1", "--format=%s"),
        "uncommitted_production_changes": dirty.splitlines(),
    }


def postgres_settings(conn: psycopg.Connection) -> dict:
    names = ("max_connections", "shared_buffers", "synchronous_commit", "fsync", "work_mem")
    return {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in names}


# --- CPU by process group -----------------------------------------------------------------------


@dataclass
class Groups:
    """How to tell the stack's processes from the rest of the machine, by command line."""

    web_port: int
    redis_port: int
    database: str
    worker_name: str  # the Celery worker's -n prefix
    runner_pid: int = field(default_factory=os.getpid)

    def of(self, pid: int, cmdline: str, comm: str) -> str:
        if pid == self.runner_pid:
            return "runner"
        if "gunicorn" in cmdline and f":{self.web_port}" in cmdline:
            return "web"
        if "celery" in cmdline and " worker" in cmdline and self.worker_name in cmdline:
            return "worker"
        if "celery" in cmdline and " beat" in cmdline and "artifacts/bench/" in cmdline:
            return "beat"
        if comm == "postgres" or cmdline.startswith("postgres"):
            if f" {self.database} " in cmdline:
                return "postgres"
            if (
                re.search(
                    r"postgres: \S+: (checkpointer|background writer|walwriter|autovacuum|"
                    r"logical replication|stats)",
                    cmdline,
                )
                or "bin/postgres" in cmdline
            ):
                return "postgres"  # the server's shared processes (WAL writer, checkpointer)
            return "other"
        if comm == "redis-server" and f":{self.redis_port}" in cmdline:
            return "redis"
        if comm == "wrk" or cmdline.startswith("wrk "):
            return "wrk"
        if "py-spy" in cmdline:
            return "py-spy"
        return "other"


def _proc_times() -> dict[int, tuple[str, str, int]]:
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = (
                Path(f"/proc/{pid}/cmdline")
                .read_bytes()
                .replace(b"\0", b" ")
                .decode(errors="replace")
            )
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks = int(fields[11]) + int(fields[12])  # utime + stime
        found[pid] = (cmdline.strip(), comm, ticks)
    return found


def _system_busy() -> tuple[int, int]:
    """(busy ticks, total ticks) summed over all CPUs, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])
    return total - idle, total


class CpuMeter:
    """CPU seconds spent by each process group between start() and stop().

    "other" is the machine's busy time that none of the stack's processes account for: other
    users of the machine. A run with much "other" CPU was measured on a busy machine.
    """

    def __init__(self, groups: Groups):
        self.groups = groups

    def start(self) -> None:
        self._before = _proc_times()
        self._sys_before = _system_busy()
        self._t0 = time.monotonic()

    def stop(self, wrk: float = 0.0) -> dict:
        """`wrk`: CPU seconds of a wrk run that started and ended inside the window (it is gone
        from /proc by now; the caller measures it with getrusage)."""
        after = _proc_times()
        busy1, _ = _system_busy()
        elapsed = time.monotonic() - self._t0
        by_group: dict[str, float] = {}
        for pid, (cmdline, comm, ticks) in after.items():
            before = self._before.get(pid)
            used = ticks - (before[2] if before and before[0] == cmdline else 0)
            group = self.groups.of(pid, cmdline, comm)
            by_group[group] = by_group.get(group, 0.0) + used / TICK
        busy = (busy1 - self._sys_before[0]) / TICK
        if wrk:
            by_group["wrk"] = by_group.get("wrk", 0.0) + wrk
        ours = sum(v for k, v in by_group.items() if k != "other")
        by_group["other"] = max(0.0, busy - ours)
        return {
            "seconds": round(elapsed, 2),
            "busy_cpu_s": round(busy, 2),
            "capacity_cpu_s": round(elapsed * (os.cpu_count() or 1), 2),
            "cpu_s": {k: round(v, 3) for k, v in sorted(by_group.items())},
        }


def machine_busy_fraction(seconds: float = 1.0) -> float:
    """The fraction of all CPUs busy over the next `seconds`."""
    b0, t0 = _system_busy()
    time.sleep(seconds)
    b1, t1 = _system_busy()
    return (b1 - b0) / max(1, t1 - t0)


def wait_for_quiet(threshold: float, max_wait: float) -> dict:
    """Wait until the machine is quiet (busy below `threshold` two seconds running)."""
    start = time.monotonic()
    quiet_in_a_row = 0
    samples = []
    while time.monotonic() - start < max_wait:
        busy = machine_busy_fraction(1.0)
        samples.append(busy)
        quiet_in_a_row = quiet_in_a_row + 1 if busy < threshold else 0
        if quiet_in_a_row >= 2:
            return {"quiet": True, "waited_s": round(time.monotonic() - start, 1)}
    return {
        "quiet": False,
        "waited_s": round(time.monotonic() - start, 1),
        "busy_last": round(samples[-1], 2) if samples else None,
    }


# --- memory -------------------------------------------------------------------------------------


def rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{pid}/status").read_text()
            total += int(re.search(r"^VmRSS:\s*(\d+)", status, re.M).group(1))
    return round(total / 1024, 1)


# --- the outbox backlog -------------------------------------------------------------------------

PENDING_SQL = "SELECT count(*) FROM allocation_delivery WHERE status = 'pending'"


def pending_deliveries(conn: psycopg.Connection) -> int:
    return conn.execute(PENDING_SQL).fetchone()[0]


class BacklogSampler(threading.Thread):
    """Samples pending deliveries and the broker queue's length while a run goes on."""

    def __init__(self, database: str, redis_client, interval: float = 0.5):
        super().__init__(daemon=True)
        self.database, self.redis, self.interval = database, redis_client, interval
        self.samples: list[tuple[float, int, int]] = []  # (t, pending deliveries, queued tasks)
        self._halt = threading.Event()

    def run(self) -> None:
        from tests.e2e.harness import connect

        start = time.monotonic()
        with connect(self.database) as conn:
            while not self._halt.is_set():
                pending = pending_deliveries(conn)
                queued = self.redis.llen("celery")
                self.samples.append((round(time.monotonic() - start, 2), pending, queued))
                self._halt.wait(self.interval)

    def stop(self) -> list[tuple[float, int, int]]:
        self._halt.set()
        self.join(10)
        return self.samples


def slope(samples: list[tuple[float, int, int]], column: int = 1) -> float:
    """Least-squares slope (per second) of one column of the samples."""
    if len(samples) < 3:
        return 0.0
    xs = [s[0] for s in samples]
    ys = [s[column] for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
