"""Atomic file writes: a result file is either complete or absent, never half-written.

How: write under a temporary name in the same directory, fsync the data, rename it over the
target, then fsync the directory so the rename itself survives a power cut. Temporary names
carry this host and process id, so the next atomic write in that directory removes what a
killed writer left without touching a live writer's files. A directory is replaced by moving
the old one aside to ``.NAME.old`` first; if a crash hits between the two renames, the next
write puts ``.NAME.old`` back, so the target is never missing for long.

Every ``OSError`` while writing (disk full, permission denied, read-only file system) becomes
one :class:`ImmuneLMError` line naming the path; the previous version, if any, is untouched.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import socket
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from immunelm.errors import ImmuneLMError

_TMP = re.compile(r"^\..+\.immunelm-(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[0-9a-f]+\.tmp$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def temp_name(target: Path) -> Path:
    """A fresh temporary name next to ``target`` that :func:`clean_stale` can attribute."""
    return target.with_name(f".{target.name}.immunelm-{_host()}-{os.getpid()}-{secrets.token_hex(4)}.tmp")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists but belongs to someone else
        return True
    return True


def remove(path: Path) -> None:
    """Delete a file or a directory tree, whichever it is; missing is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale(directory: Path) -> None:
    """Remove temporaries in ``directory`` whose writer (on this host) is no longer running."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        match = _TMP.match(name)
        if match and match["host"] == _host() and not process_alive(int(match["pid"])):
            remove(directory / name)


def _old_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def recover(target: Path) -> None:
    """Finish a directory replacement that a crash interrupted (see the module docstring)."""
    old = _old_name(target)
    if not os.path.lexists(old):
        return
    if os.path.lexists(target):
        remove(old)  # the new version made it into place; only the cleanup was missed
    else:
        os.replace(old, target)  # stopped between the two renames: the previous version returns


def write_error(target: Path, exc: OSError) -> ImmuneLMError:
    reason = exc.strerror or str(exc)
    return ImmuneLMError(f"{target}: could not write ({reason}); nothing was written there")


def ensure_dir(path: Path) -> Path:
    """``mkdir -p`` with a one-line error naming the directory (under a file, read-only, denied)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImmuneLMError(f"{path}: cannot create directory ({exc.strerror or exc})") from exc
    if not path.is_dir():
        raise ImmuneLMError(f"{path}: exists and is not a directory")
    return path


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open directories; the data itself was synced
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _widen(path: Path, mode: int) -> None:
    """Give ``path`` the mode a plain ``open``/``mkdir`` would have: writers such as safetensors
    create through private (0600) temporaries, and results are meant to be shared."""
    if stat.S_IMODE(path.lstat().st_mode) != mode:
        os.chmod(path, mode)


def finish_tree(root: Path) -> None:
    """Normal permissions for everything under ``root`` (created 0777 & ~umask), then fsync it."""
    dir_mode = stat.S_IMODE(root.stat().st_mode)  # mkdir applied the umask: reading it back is race-free
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                _widen(path, 0o666 & dir_mode | stat.S_IMODE(path.stat().st_mode) & 0o111 & dir_mode)
                fsync_file(path)
        _widen(Path(dirpath), dir_mode)
        fsync_dir(Path(dirpath))


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place only if the block succeeds."""
    target = Path(path)
    parent = ensure_dir(target.parent)
    clean_stale(parent)
    tmp = temp_name(target)
    try:
        try:
            # O_CREAT with 0o666 lets the umask decide, like any other output file (mkstemp made 0600).
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            mode = stat.S_IMODE(tmp.stat().st_mode)
            yield tmp
            _widen(tmp, mode)  # the block may have replaced the file with a private one
            fsync_file(tmp)
            os.replace(tmp, target)
            fsync_dir(parent)
        except OSError as exc:
            raise write_error(target, exc) from exc
    finally:
        remove(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, data: Any, allow_nan: bool = True) -> None:
    """``allow_nan=False``: a NaN/inf raises instead of writing JSON that strict readers reject."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str, allow_nan=allow_nan) + "\n")


def _swap_in(tmp: Path, target: Path) -> None:
    if not os.path.lexists(target):
        os.replace(tmp, target)
        return
    old = _old_name(target)
    os.replace(target, old)
    os.replace(tmp, target)
    remove(old)


@contextmanager
def build_lock(target: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock for building the cache entry ``target`` (a lock file beside it).

    Build-once caches (the organism, a GGUF conversion) are reached by parallel processes (the
    leaderboard's cells, the search's workers): the first builds, the others wait and then find
    it built, instead of racing two renames onto one name. Callers re-check "built?" inside.
    Where ``fcntl`` is missing (Windows) there is no lock and concurrent builds must be avoided.
    """
    target = Path(target)
    lock_path = ensure_dir(target.parent) / f".{target.name}.lock"
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o666)
    except OSError as exc:
        raise ImmuneLMError(f"{lock_path}: cannot open lock file ({exc.strerror or exc})") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel if this process dies
        yield
    finally:
        os.close(fd)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it into place when complete.

    An existing directory at ``path`` is replaced only after the new one is fully written.
    """
    target = Path(path)
    parent = ensure_dir(target.parent)
    tmp = temp_name(target)
    try:
        try:
            recover(target)
            clean_stale(parent)
            tmp.mkdir(mode=0o777)  # the umask applies, as for any directory (mkdtemp made 0700)
            yield tmp
            finish_tree(tmp)
            _swap_in(tmp, target)
            fsync_dir(parent)
        except OSError as exc:
            raise write_error(target, exc) from exc
    finally:
        remove(tmp)
