"""What this machine lends the project's own parallel work (torch's threads aside)."""
from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the OS has one (a container's or
    `taskset`'s limit, which os.cpu_count() ignores), else the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
