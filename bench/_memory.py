"""Peak resident memory of this process, for the benchmarks' fresh child processes."""

from __future__ import annotations

import resource


def peak_kib() -> int:
    """This process's peak resident set in KiB: ``VmHWM`` from ``/proc/self/status`` on Linux.

    Not ``ru_maxrss``: Linux carries the parent's resident set at ``fork`` into
    the child's ``ru_maxrss`` across ``exec``, so a child started by a
    benchmark that holds 2 GiB reports at least 2 GiB, whatever it uses
    itself (measured). ``VmHWM`` belongs to the child's own address space.
    Elsewhere (no ``/proc``) ``ru_maxrss`` is the best there is.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
