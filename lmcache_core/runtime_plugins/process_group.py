"""Process-group signalling and reaping for runtime plugins (POSIX; /proc where present).

Each plugin starts in its own session, so its process group holds the plugin and
whatever it spawned. Signalling the group reaches grandchildren too. A grandchild
whose parent died first is re-parented; the launcher makes the server a *child
subreaper* so such orphans come back to it, and reaps the ones of its plugin
groups, instead of leaving zombies behind on hosts whose init never reaps
(minimal container inits).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
from dataclasses import dataclass

logger = logging.getLogger("lmcache.runtime_plugins")

_PR_SET_CHILD_SUBREAPER = 36
_PROC = "/proc"


@dataclass(frozen=True)
class GroupMember:
    """One process of a process group, as /proc shows it."""

    pid: int
    ppid: int
    state: str


def become_child_subreaper() -> bool:
    """Make orphaned descendants of this process re-parent to it (Linux only).

    Returns:
        Whether the kernel accepted it.
    """
    name = ctypes.util.find_library("c")
    if not name or not os.path.isdir(_PROC):
        return False
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to every process of group ``pgid``; ``False`` when none is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        logger.warning("not allowed to signal process group %d", pgid)
        return False
    return True


def _read_stat(pid: str) -> tuple[int, int, str] | None:
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields start after the last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    if len(fields) < 3:
        return None
    return int(fields[1]), int(fields[2]), fields[0].decode("ascii", "replace")


def group_members(pgid: int) -> list[GroupMember]:
    """The processes of group ``pgid`` (empty without /proc)."""
    members = []
    try:
        entries = os.listdir(_PROC)
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        stat = _read_stat(entry)
        if stat is not None and stat[1] == pgid:
            members.append(GroupMember(int(entry), stat[0], stat[2]))
    return members


def reap_orphans(pgid: int) -> int:
    """Reap the dead processes of group ``pgid`` that were re-parented to this process.

    The group's leader is left alone (its ``Popen`` reaps it); only orphans
    re-parented to us can be our children in that group, so no other
    component's child is ever reaped here.

    Returns:
        How many were reaped.
    """
    reaped = 0
    me = os.getpid()
    for member in group_members(pgid):
        if member.pid != pgid and member.ppid == me and member.state == "Z":
            try:
                if os.waitpid(member.pid, os.WNOHANG)[0] == member.pid:
                    reaped += 1
            except ChildProcessError:
                pass
    return reaped


def group_alive(pgid: int) -> bool:
    """Whether group ``pgid`` still has any process; reaps our orphans first.

    A zombie counts: it is either the leader, which its ``Popen`` reaps, or a
    descendant whose parent will reap it or die and hand it to us.
    """
    if not os.path.isdir(_PROC):
        return signal_group(pgid, 0)
    reap_orphans(pgid)
    return bool(group_members(pgid))


def kill_group(pgid: int) -> None:
    """SIGKILL every process of group ``pgid``."""
    signal_group(pgid, signal.SIGKILL)
