"""Watch a process tree from /proc: peak RSS of every process (VmHWM) and the CPU seconds they used.

Benchmarks run a command (``tiers build``, ``tiers annotate``) as a child and sample its process tree
every ``interval`` seconds: the driver, Ray's raylet and GCS, and every Ray worker (all descendants of
the driver when it starts Ray itself). ``VmHWM`` is the kernel's own high-water mark of a process's
resident memory, so a sample misses no peak as long as the process is still alive when sampled; CPU
is the last ``utime + stime`` seen per process (what a process burns after the last sample is missed;
with 0.2 s sampling that is noise; the driver's is read once more after it exits, before it is reaped).
Not ``wait4``'s rusage of the driver: it includes every descendant the driver reaped.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field

TICK = os.sysconf("SC_CLK_TCK")


def _fields(stat: bytes) -> list[bytes]:
    """/proc/PID/stat's fields after the command name (which may hold spaces and parentheses): state first."""
    return stat.rsplit(b")", 1)[1].split()


def _cpu(fields: list[bytes]) -> float:
    """CPU seconds so far (utime + stime) from :func:`_fields`."""
    return (int(fields[11]) + int(fields[12])) / TICK


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat", "rb") as f:
                    ppid = int(_fields(f.read())[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    return kids


def _tree(root: int) -> list[int]:
    kids, out, todo = _children(), [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _status(pid: int) -> dict[str, int]:
    """The process's /proc status sizes in bytes (VmHWM, VmRSS, RssAnon, ...); empty when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    fields = (line.split(":", 1) for line in lines if line.endswith(" kB"))
    return {key: int(value.split()[0]) * 1024 for key, value in fields}


def peak_rss(pid: int) -> int:
    """The process's peak RSS so far (VmHWM, bytes); 0 when it is gone."""
    return _status(pid).get("VmHWM", 0)


def rss(pid: int) -> int:
    """The process's RSS now (VmRSS, bytes): what it still holds, where the peak says what it ever held; 0
    when it is gone."""
    return _status(pid).get("VmRSS", 0)


def _sample(pid: int) -> tuple[str, int, float, int, int, int, int] | None:
    """(name, peak RSS bytes, CPU seconds, and RSS bytes now: all, anonymous, file, shared memory) of one
    process, or None when it is gone. Anonymous RSS leaves out file pages (shared libraries, files it
    maps) and shared memory (for a Ray worker, the object store's pages it touched)."""
    size = _status(pid)
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    name = cmd[:160] or stat.split(b"(", 1)[1].rsplit(b")", 1)[0].decode(errors="replace")
    cpu = _cpu(_fields(stat))
    peak, now, anon, file, shmem = (size.get(k, 0) for k in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"))
    return name, peak, cpu, now, anon, file, shmem


def _is_worker(cmd: str, marker: str = "ray::") -> bool:
    return marker in cmd or "default_worker" in cmd


def ray_workers() -> dict[int, tuple[float, int]]:
    """Every Ray worker process on this machine: pid -> (CPU seconds, minor page faults) so far."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{d}/stat", "rb") as f:
                fields = _fields(f.read())
        except OSError:
            continue
        if _is_worker(cmd):
            out[int(d)] = (_cpu(fields), int(fields[7]))
    return out


@dataclass
class TreeStats:
    peak: dict[int, tuple[str, int]] = field(default_factory=dict)  # pid -> (command, peak RSS bytes)
    cpu: dict[int, float] = field(default_factory=dict)  # pid -> CPU seconds
    # wait4's view of the driver: (largest peak RSS among it and the descendants it reaped, their CPU
    # seconds together); for cross-checking the samples, not a figure of the driver alone.
    reaped: tuple[int, float] = (0, 0.0)
    # Per Ray worker and phase (``phase``, set by the caller as its job reports progress): (phase, pid) ->
    # [its first RSS sample in the phase, its largest RSS, and its largest anonymous, file and shared-memory
    # RSS]. A reused worker's
    # VmHWM holds every task it ran; its RSS within a phase is that phase's (e.g. the dedup task in a
    # build's decide stage), to the sampling interval. Anonymous RSS leaves out file pages (a worker that
    # maps raw tars, or loads torch's libraries, shows those pages, but they are the page cache's).
    phase: str = ""
    worker_span: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    first_phase: dict[int, str] = field(default_factory=dict)  # pid -> the phase it was first seen in

    def record(self, pid: int, sample: tuple, phase: str, worker: bool = True) -> None:
        """File one :func:`_sample` of ``pid`` under ``phase`` (``worker``: it may be a Ray worker). A process
        once seen as a Ray worker stays one: exited and not yet reaped, its command line reads empty and
        its name falls back to the executable's (a loaded machine samples it in that state often)."""
        cmdline, hwm, cpu, now, anon, file, shmem = sample
        old = self.peak.get(pid, ("", 0))
        name = old[0] if _is_worker(old[0]) else cmdline or old[0]
        self.peak[pid] = (name, max(old[1], hwm))
        self.cpu[pid] = max(self.cpu.get(pid, 0.0), cpu)
        if worker and _is_worker(name):
            self.first_phase.setdefault(pid, phase)
            span = self.worker_span.setdefault((phase, pid), [now, now, anon, file, shmem])
            for k, v in enumerate((now, anon, file, shmem), start=1):
                span[k] = max(span[k], v)

    def _per_phase(self, value) -> dict[str, int]:
        out: dict[str, int] = {}
        for (phase, pid), span in self.worker_span.items():
            v = value(pid, phase, span)
            if v is not None:
                out[phase] = max(out.get(phase, 0), v)
        return out

    def worker_rss_by_phase(self) -> dict[str, int]:
        """Per phase, the largest RSS any worker was sampled at."""
        return self._per_phase(lambda pid, phase, span: span[1])

    def worker_anon_by_phase(self) -> dict[str, int]:
        """Per phase, the largest anonymous RSS any worker was sampled at."""
        return self._per_phase(lambda pid, phase, span: span[2])

    def worker_file_by_phase(self) -> dict[str, int]:
        """Per phase, the largest file-page RSS any worker was sampled at (libraries, mapped files)."""
        return self._per_phase(lambda pid, phase, span: span[3])

    def worker_shmem_by_phase(self) -> dict[str, int]:
        """Per phase, the largest shared-memory RSS any worker was sampled at (Ray's object store)."""
        return self._per_phase(lambda pid, phase, span: span[4])

    def worker_growth_by_phase(self) -> dict[str, int]:
        """Per phase, the largest growth of one worker's RSS over its first sample in that phase, among
        workers already running before it (a worker started within a phase grows by its start-up too)."""
        return self._per_phase(lambda pid, phase, span: span[1] - span[0] if self.first_phase[pid] != phase else None)

    def largest_worker_history(self) -> dict[str, list[str]]:
        """Per phase, the earlier phases in which the worker with that phase's largest RSS ran: a reused
        worker carries what those phases' tasks left, unless they handed it back."""
        seen: dict[int, list[str]] = {}  # pid -> its phases, in the order first sampled
        for phase, pid in self.worker_span:
            seen.setdefault(pid, []).append(phase)
        out = {}
        for phase in dict.fromkeys(ph for ph, _ in self.worker_span):
            pid = max((p for ph, p in self.worker_span if ph == phase), key=lambda p: self.worker_span[(phase, p)][1])
            out[phase] = seen[pid][: seen[pid].index(phase)]
        return out

    def driver_peak(self, root: int) -> int:
        return self.peak.get(root, ("", 0))[1]

    def largest_worker(self, root: int, marker: str = "ray::") -> tuple[str, int]:
        """The Ray worker (by command) with the largest peak RSS."""
        workers = [(c, m) for p, (c, m) in self.peak.items() if p != root and _is_worker(c, marker)]
        return max(workers, key=lambda x: x[1], default=("", 0))

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu.values())


def run_watched(
    cmd: list[str], interval: float = 0.2, on_line=None, on_start=None, stats: TreeStats | None = None, **popen
) -> tuple[int, float, TreeStats, int]:
    """Run ``cmd``; returns (exit code, wall seconds, stats of its process tree, its pid). ``on_line(t, line)``
    gets each stdout line with its arrival time (seconds since start); ``on_start(pid)`` the process's pid;
    ``stats`` (default: a new one) is filled as the samples come (``on_line`` may set its ``phase``)."""
    stats = TreeStats() if stats is None else stats
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
    if on_start is not None:
        on_start(proc.pid)
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            for pid in _tree(proc.pid):
                phase = stats.phase  # read before the sample: a figure is never filed under a later phase
                s = _sample(pid)
                if s is not None:
                    stats.record(pid, s, phase, worker=pid != proc.pid)
            stop.wait(interval)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    for line in proc.stdout:
        if on_line is not None:
            on_line(time.perf_counter() - t0, line.rstrip("\n"))
    # Wait for the driver's exit without reaping it: as a zombie its /proc stat still holds its own final
    # CPU time. wait4's rusage would not do: it adds every descendant the driver reaped (Ray's processes
    # and, through them, theirs), already counted by the samples, and its ru_maxrss is the largest of
    # them, not the driver's (a 200,000-URL build's "driver" read 807 MB that way against 636 sampled).
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    final = _sample(proc.pid)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    proc.returncode = rc
    stop.set()
    t.join()
    old = stats.peak.get(proc.pid, (" ".join(cmd)[:160], 0))
    stats.peak[proc.pid] = old  # VmHWM as last sampled: a zombie has no memory figures left
    if final is not None:
        stats.cpu[proc.pid] = max(stats.cpu.get(proc.pid, 0.0), final[2])
    stats.reaped = (usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime)
    return rc, wall, stats, proc.pid
