"""Load generation for bench/serving.py: one measured cell (a path at a concurrency) and CPU accounting."""
from __future__ import annotations

import math
import os
import statistics
import threading
import time
from dataclasses import dataclass, field


# -- one (path, concurrency) cell --------------------------------------------------------------
@dataclass
class Cell:
    path: str
    concurrency: int
    requests: int = 0  # completed (ok + errors) inside the timing
    errors: int = 0
    wall_s: float = 0.0
    req_per_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    warmup_errors: int = 0
    time_bounded: bool = False
    other_cpu_share: float | None = None
    first_error: str | None = None
    extra: dict = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)  # of the successful requests


def merge_cells(parts: list[Cell]) -> Cell:
    """One cell from the rounds it was measured in (the same path and concurrency): its requests
    together, over the wall time of its rounds together."""
    first = parts[0]
    cell = Cell(first.path, first.concurrency)
    cell.latencies_ms = [x for p in parts for x in p.latencies_ms]
    cell.requests = sum(p.requests for p in parts)
    cell.errors = sum(p.errors for p in parts)
    cell.warmup_errors = sum(p.warmup_errors for p in parts)
    cell.wall_s = sum(p.wall_s for p in parts)
    cell.time_bounded = any(p.time_bounded for p in parts)
    cell.first_error = next((p.first_error for p in parts if p.first_error), None)
    shares = [(p.other_cpu_share, p.wall_s) for p in parts if p.other_cpu_share is not None]
    cell.other_cpu_share = (sum(s * w for s, w in shares) / sum(w for _, w in shares)
                            if shares and sum(w for _, w in shares) > 0 else None)
    for p in parts:
        for key, value in p.extra.items():
            cell.extra[key] = cell.extra.get(key, 0) + value
    _summarize(cell)
    return cell


def _summarize(cell: Cell) -> None:
    ms = cell.latencies_ms
    cell.req_per_s = (len(ms) / cell.wall_s) if cell.wall_s > 0 else 0.0
    cell.p50_ms, cell.p99_ms = percentile(ms, 50), percentile(ms, 99)
    cell.mean_ms = statistics.fmean(ms) if ms else None


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def run_cell(path: str, make_call, concurrency: int, requests: int, deadline: float, wait_s: float) -> Cell:
    cell = Cell(path, concurrency)
    calls = [make_call() for _ in range(concurrency)]  # clients before the clock
    warm = threading.Barrier(concurrency)
    go = threading.Barrier(concurrency + 1)
    lock = threading.Lock()
    issued = [0]
    latencies: list[float] = []
    errors: list[str] = []
    ends: list[float] = []

    def take() -> bool:
        with lock:
            if issued[0] >= requests or time.perf_counter() >= deadline:
                if issued[0] < requests:
                    cell.time_bounded = True
                return False
            issued[0] += 1
            return True

    def worker(call) -> None:
        try:  # one untimed request per thread, all in flight together (every Lambda environment warms up)
            warm.wait(timeout=wait_s)
            call()
        except Exception as exc:  # noqa: BLE001 - a benchmark counts errors, never dies of them
            with lock:
                cell.warmup_errors += 1
                cell.first_error = cell.first_error or f"warm-up: {type(exc).__name__}: {exc}"[:300]
        try:
            go.wait(timeout=wait_s)
        except threading.BrokenBarrierError:
            return
        while take():
            began = time.perf_counter()
            try:
                call()
                ok, message = True, ""
            except Exception as exc:  # noqa: BLE001
                ok, message = False, f"{type(exc).__name__}: {exc}"[:300]
            ended = time.perf_counter()
            with lock:
                ends.append(ended)
                if ok:
                    latencies.append(ended - began)
                else:
                    errors.append(message)

    threads = [threading.Thread(target=worker, args=(c,), name=f"{path}-{i}", daemon=True)
               for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    cpu_before = _cpu_snapshot()
    try:
        go.wait(timeout=wait_s)
    except threading.BrokenBarrierError:  # a warm-up outlived wait_s: the threads give up, the cell reports 0
        cell.first_error = cell.first_error or f"warm-up took more than {wait_s:.0f} s"
    started = time.perf_counter()
    for t in threads:
        t.join()
    cpu_after = _cpu_snapshot()
    cell.wall_s = (max(ends) if ends else time.perf_counter()) - started
    cell.requests = len(ends)
    cell.errors = len(errors)
    cell.first_error = cell.first_error or (errors[0] if errors else None)
    cell.latencies_ms = [x * 1000 for x in latencies]
    _summarize(cell)
    cell.other_cpu_share = _other_share(cpu_before, cpu_after)
    for call in calls:
        client = getattr(call, "client", None)
        if client is not None:
            client.close()
    return cell


# -- is anything else using the cores? ----------------------------------------------------------
def _cpu_snapshot() -> tuple[float, float, float] | None:
    """(machine busy CPU s, this process tree's CPU s, monotonic s) from /proc; None off Linux."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
        tick = os.sysconf("SC_CLK_TCK")
        parents, cpu = {}, {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid = int(entry.name)
            parents[pid] = int(fields[1])
            cpu[pid] = (int(fields[11]) + int(fields[12])) / tick
        ours, frontier = {os.getpid()}, [os.getpid()]
        children: dict[int, list[int]] = {}
        for pid, ppid in parents.items():
            children.setdefault(ppid, []).append(pid)
        while frontier:  # the gateway, its endpoint workers and Lambda environments are our descendants
            for child in children.get(frontier.pop(), []):
                if child not in ours:
                    ours.add(child)
                    frontier.append(child)
        mine = sum(cpu.get(pid, 0.0) for pid in ours)
        return (user + nice + system + irq + softirq + steal) / tick, mine, time.monotonic()
    except (OSError, ValueError):
        return None


def _other_share(before, after) -> float | None:
    if before is None or after is None or after[2] <= before[2]:
        return None
    other = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, other) / ((after[2] - before[2]) * (os.cpu_count() or 1))
