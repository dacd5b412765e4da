"""Runs wrk with bench/lua/load.lua and reads back the JSON line its done() prints."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

LUA = Path(__file__).resolve().parent / "lua" / "load.lua"


def run_wrk(
    url: str,
    connections: int,
    seconds: float,
    mode: str,
    token: str,
    prefix: str,
    target: str,
    count: int = 1,
    delay_ms: int = 0,
) -> dict:
    """One wrk run; its parsed result (statuses, latency percentiles in µs, errors)."""
    threads = 1 if connections == 1 else 2  # the box has 2 cores: wrk gets at most 2 threads
    argv = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA),
        url,
        "--",
        mode,
        token,
        prefix,
        target,
        str(count),
    ]
    env = {**os.environ, "BENCH_DELAY_MS": str(int(delay_ms))}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 60)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result = json.loads(line.removeprefix("BENCH_JSON "))
    result["argv"] = ["wrk", *argv[1:]]
    result["argv"][argv.index("--") + 2] = "<token>"
    result["threads"] = threads
    result["rate"] = result["requests"] / (result["duration_us"] / 1e6)
    result["statuses"] = dict(sorted(result["statuses"].items()))
    # The last point (100) is wrk's maximum; percentile(100) may read 0 in some builds.
    result["percentiles_us"] = [
        [float(p), v] for p, v in result["percentiles_us"] if not (float(p) == 100 and v == 0)
    ]
    return result


def percentile(result: dict, p: float) -> float:
    """Milliseconds at percentile `p` (one of the points the Lua script reported)."""
    for q, v in result["percentiles_us"]:
        if abs(q - p) < 1e-9:
            return v / 1000
    raise KeyError(p)
