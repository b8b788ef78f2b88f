"""How much memory this process may really use: the smallest of the host's available memory, the cgroup's
limit (what SLURM, Kubernetes or Docker set; v2 `memory.max`, v1 `memory.limit_in_bytes`, less what the
group already uses) and the process's own limits (`RLIMIT_AS`, `RLIMIT_DATA`, less what it has mapped).
A job given 8 GB on a 512 GB node can use 8 GB, whatever `free` says."""

from __future__ import annotations

import os
import resource
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (v2) or a missing file: no limit


def _own_cgroup(root: Path, proc_self: Path) -> list[Path]:
    """The folders of this process's cgroup under `root`, v2 (`0::/path`) and v1 memory (`N:memory:/path`),
    then the root itself (a container sees its own group as the root)."""
    folders = []
    try:
        for line in (proc_self / "cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "":
                folders.append(root / path.lstrip("/"))
            elif "memory" in controllers.split(","):
                folders.append(root / "memory" / path.lstrip("/"))
    except OSError:
        pass
    return [*folders, root, root / "memory"]


def cgroup_room(root: Path = CGROUP, proc_self: Path = Path("/proc/self")) -> int | None:
    """Bytes the cgroup still allows (its limit less its usage), or None without a limit."""
    for folder in _own_cgroup(root, proc_self):
        for limit_name, usage_name in (("memory.max", "memory.current"),
                                       ("memory.limit_in_bytes", "memory.usage_in_bytes")):
            limit = _read_int(folder / limit_name)
            if limit is not None and limit < 2**60:  # v1 writes "no limit" as a huge number
                return max(0, limit - (_read_int(folder / usage_name) or 0))
    return None


def rlimit_room(proc_self: Path = Path("/proc/self")) -> int | None:
    """Bytes the process's address-space and data limits still allow, or None without either."""
    rooms = []
    for which, field in ((resource.RLIMIT_AS, "VmSize"), (resource.RLIMIT_DATA, "VmData")):
        soft, _ = resource.getrlimit(which)
        if soft != resource.RLIM_INFINITY:
            rooms.append(max(0, soft - _status_kib(proc_self, field) * 1024))
    return min(rooms) if rooms else None


def _status_kib(proc_self: Path, field: str) -> int:
    try:
        for line in (proc_self / "status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def host_available() -> int:
    """MemAvailable of /proc/meminfo (bytes), or the physical memory where there is none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def usable_memory() -> tuple[int, str]:
    """(bytes this process may still use, which limit that is: host, cgroup or rlimit)."""
    rooms = {"available host memory": host_available(), "the cgroup's limit": cgroup_room(),
             "the process's RLIMIT_AS/RLIMIT_DATA": rlimit_room()}
    known = {name: room for name, room in rooms.items() if room is not None}
    name = min(known, key=known.get)
    return known[name], name
