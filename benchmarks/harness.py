"""What the benchmarks share: one configuration per fresh process under a time cap and a memory cap, peak memory
as growth of the resident set over the built model, and append-only JSON-lines results that a later run resumes.

A child process reports one JSON line per event on stdout (`{"step": seconds}` after every step, then
`{"result": {...}}`), so a configuration killed at its time cap still reports how long its steps took.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

MIB = 2**20


# --------------------------------------------------------------------------------------------------
# Inside the child
# --------------------------------------------------------------------------------------------------


def _status_field(name: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {name}")


def reset_peak_memory() -> int:
    """Start a new high-water mark of the resident set (Linux `clear_refs`); returns the current resident set."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:  # without it the high-water mark includes building the model: an upper bound
        pass
    return _status_field("VmRSS")


def peak_memory() -> int:
    return _status_field("VmHWM")


def resident_memory() -> int:
    """The current resident set of this process."""
    return _status_field("VmRSS")


def report(**event) -> None:
    print(json.dumps(event), flush=True)


def time_steps(step: Callable[[], None], iterations: int) -> dict:
    """One warm-up step, then `iterations` timed steps (median wall and CPU time); peak memory is the growth of the
    resident set over the state before the warm-up."""
    baseline = reset_peak_memory()
    times, cpu_times = [], []
    for index in range(iterations + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        report(step=seconds, warmup=index == 0)
        if index:
            times.append(seconds)
            cpu_times.append(cpu_seconds)
    return {
        "seconds": statistics.median(times),
        "step_seconds": times,
        # CPU time of all threads: on a loaded machine with one thread, a steadier measure of the work than wall time
        "cpu_seconds": statistics.median(cpu_times),
        "peak_bytes": peak_memory() - baseline,
    }


# --------------------------------------------------------------------------------------------------
# In the parent
# --------------------------------------------------------------------------------------------------


def available_memory() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable")


def _resident(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def run_isolated(arguments: list[str], time_cap: float, memory_cap: int) -> dict:
    """Run `python arguments...` in a fresh process; kill it past `time_cap` seconds or `memory_cap` bytes resident.

    Returns the child's result, or `{"status": "time cap" | "out of memory" | "failed", ...}` with the step times
    it reported before it ended.
    """
    child = subprocess.Popen([sys.executable, *arguments], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr_lines = [], []
    readers = [
        threading.Thread(target=lambda: stdout.extend(child.stdout), daemon=True),
        threading.Thread(target=lambda: stderr_lines.extend(child.stderr), daemon=True),
    ]
    for reader in readers:
        reader.start()
    peak_seen, status = 0, None
    start = time.monotonic()
    while child.poll() is None:
        time.sleep(0.25)
        peak_seen = max(peak_seen, _resident(child.pid))
        if peak_seen > memory_cap:
            status = "out of memory"
        elif time.monotonic() - start > time_cap:
            status = "time cap"
        if status:
            child.kill()
            break
    child.wait()
    for reader in readers:
        reader.join()
    stderr = "".join(stderr_lines)
    events = [json.loads(line) for line in stdout if line.startswith("{")]
    steps = [event["step"] for event in events if "step" in event]
    result = next((event["result"] for event in events if "result" in event), None)
    if result is not None and status is None:
        return {"status": "ok", **result}
    if status is None:
        last = (stderr.strip().splitlines() or [f"exit code {child.returncode}"])[-1]
        out_of_memory = child.returncode == -9 or any(
            marker in stderr for marker in ("MemoryError", "can't allocate memory", "DefaultCPUAllocator")
        )
        status, detail = ("out of memory", last) if out_of_memory else ("failed", last)
    else:
        detail = f"> {time_cap:.0f} s" if status == "time cap" else f"> {memory_cap / 2**30:.1f} GiB resident"
    return {"status": status, "detail": detail, "step_seconds": steps, "elapsed": time.monotonic() - start}


class ResultStore:
    """Append-only JSON lines; the latest record of a key wins, so an interrupted run resumes where it stopped."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path) as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def latest(self, key_fields: tuple[str, ...]) -> dict[tuple, dict]:
        return {tuple(record.get(field) for field in key_fields): record for record in self.records()}

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def describe(record: dict | None, field: str = "seconds", scale: float = 1.0, digits: int = 2) -> str:
    """A table cell: the measured value, or why there is none."""
    if record is None:
        return "not run"
    if record.get("status") != "ok":
        steps = record.get("step_seconds") or []
        seen = f" (first step {steps[0]:.0f} s)" if steps and field.endswith("seconds") else ""
        return f"{record['status']}: {record.get('detail', '')}{seen}"
    return f"{record[field] / scale:.{digits}f}" if field in record else "not recorded"


__all__ = [
    "MIB",
    "ResultStore",
    "available_memory",
    "describe",
    "peak_memory",
    "report",
    "reset_peak_memory",
    "resident_memory",
    "run_isolated",
    "time_steps",
]
