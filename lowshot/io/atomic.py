"""Atomic writes: write to a temporary name in the target folder, then rename into place."""
from __future__ import annotations

import contextlib
import glob
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

from lowshot.errors import os_error

HOST = socket.gethostname()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.

    A killed or failing writer leaves the old file (or no file) in place, never a half-written one. Its
    temporary (`.<name>.<host>.<pid>.<random>.tmp`) is removed by the next writer of `path` on this host once
    that process is gone (`remove_stale`). A file-system error (read-only folder, full disk, permission denied)
    becomes a one-line `InputError` naming `path`.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(path)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.{HOST}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes files private; outputs are not
        os.replace(tmp, path)
    except OSError as e:
        ours = e.filename is None or str(e.filename) in (str(tmp), str(path), str(path.parent))
        raise (os_error(e, f"{path}: cannot write it") if ours else e) from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def remove_stale(path: Path) -> None:
    """Remove the temporaries of `path` that writers on this host left when they were killed (their process is
    gone); those of running processes and of other hosts (a shared file system) stay."""
    prefix = f".{path.name}."
    for old in path.parent.glob(glob.escape(prefix) + "*.tmp"):
        host, pid, _ = (old.name[len(prefix):-len(".tmp")].rsplit(".", 2) + ["", "", ""])[:3]
        if host == HOST and pid.isdigit() and not _running(int(pid)):
            old.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1) + "\n")


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """`torch.save` of plain tensors and dicts, atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
