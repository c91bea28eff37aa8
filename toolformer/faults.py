"""Fault injection for the recovery tests: a failure that happens once per flag file, never in a real run."""

from __future__ import annotations

import os


def fire_once(flag: str | None, message: str) -> bool:
    """True for the first caller that creates ``flag`` (atomically, across processes); False after, or when unset."""
    if not flag:
        return False
    try:
        fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, f"{message} (pid {os.getpid()})\n".encode())
    os.close(fd)
    return True
