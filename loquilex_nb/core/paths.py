"""Confine user-supplied names to a root directory.

Output names come from notebook users and HTTP requests; a name like
``../../etc`` or a symlink planted inside the output root must not let us
write elsewhere on disk. Input files are opened once, confined (`open_beneath`),
so a symlink swapped in after validation cannot redirect the read.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pathlib
import platform

__all__ = ["resolve_under", "ensure_dir_under", "open_beneath", "relative_to_root", "MAX_DEPTH", "MAX_PATH"]

MAX_DEPTH = 32  # path components; deeper names are refused, not recursed into
MAX_PATH = 1024  # characters
MAX_COMPONENT = 255  # bytes, as most filesystems


def _check_name(name: str | os.PathLike) -> pathlib.PurePath:
    raw = os.fspath(name)
    if not isinstance(raw, str):
        # bytes paths would bypass the string checks below
        raise ValueError(f"path {raw!r} must be str, not {type(raw).__name__}")
    if raw.strip() == "":
        raise ValueError(f"path {raw!r} is empty")
    if len(raw) > MAX_PATH:
        raise ValueError(f"path {raw[:40]!r}... is longer than {MAX_PATH} characters")
    if any(c in raw for c in "\x00\n\r"):
        raise ValueError(f"path {raw[:80]!r} contains a NUL or line break")
    pure = pathlib.PurePath(raw)
    # PureWindowsPath catches "C:\\x" / "\\\\server" even when running on POSIX
    if pure.is_absolute() or pathlib.PureWindowsPath(raw).is_absolute() or raw.startswith(("/", "\\")):
        raise ValueError(f"path {raw!r} is absolute; expected a name relative to the root")
    # Split on both separators so "a\\..\\b" is rejected on every OS.
    parts = raw.replace("\\", "/").split("/")
    if ".." in parts:
        raise ValueError(f"path {raw!r} contains a '..' component")
    if len(pure.parts) > MAX_DEPTH:
        raise ValueError(f"path {raw[:40]!r}... is {len(pure.parts)} folders deep; at most {MAX_DEPTH}")
    if any(len(p.encode("utf-8", "surrogatepass")) > MAX_COMPONENT for p in pure.parts):
        raise ValueError(f"path {raw[:40]!r}... has a component longer than {MAX_COMPONENT} bytes")
    return pure


def relative_to_root(root: str | os.PathLike, name: str) -> str:
    """An absolute path inside ``root`` (as the server reports it) becomes relative to it;
    anything else is returned unchanged, for `_check_name` to judge."""
    if isinstance(name, str) and name.startswith("/") and len(name) <= MAX_PATH:
        root_p = pathlib.Path(root).resolve(strict=False)
        pure = pathlib.PurePosixPath(name)
        if pure.is_relative_to(root_p) and pure != root_p:
            return str(pure.relative_to(root_p))
    return name


def resolve_under(root: str | os.PathLike, name: str | os.PathLike) -> pathlib.Path:
    """Return the resolved path of ``name`` inside ``root``.

    Raises ValueError naming the offending path if ``name`` is absolute,
    empty, contains ``..`` or resolves (following symlinks) outside ``root``.
    """
    pure = _check_name(name)
    root_resolved = pathlib.Path(root).resolve(strict=False)
    try:
        target = (root_resolved / pure).resolve(strict=False)
    except (RuntimeError, OSError) as exc:  # symlink loops, names the OS refuses
        raise ValueError(f"path {os.fspath(name)!r} cannot be resolved: {exc}") from None
    # The lexical checks above cannot see symlinks; only the resolved path can.
    if target != root_resolved and not target.is_relative_to(root_resolved):
        raise ValueError(
            f"path {os.fspath(name)!r} resolves to {str(target)!r}, outside root {str(root_resolved)!r}"
        )
    return target


def ensure_dir_under(root: str | os.PathLike, name: str | os.PathLike) -> pathlib.Path:
    """Create directory ``name`` under ``root`` (parents included) and return it.

    Re-validates after mkdir: a symlink swapped in between the check and the
    creation would otherwise send later writes outside the root.
    """
    target = resolve_under(root, name)
    target.mkdir(parents=True, exist_ok=True)
    again = resolve_under(root, name)
    if again != target or not again.is_dir():
        raise ValueError(f"path {os.fspath(name)!r} changed while being created (now {str(again)!r})")
    return again


# -- confined open ------------------------------------------------------------------------

_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "AMD64": 437, "arm64": 437}.get(platform.machine())
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _openat2(dirfd: int, rel: str, flags: int) -> int:
    """openat2(2) with RESOLVE_BENEATH: the kernel refuses any step (symlink or ..) that leaves dirfd."""
    if _SYS_OPENAT2 is None:
        raise OSError(errno.ENOSYS, "openat2 unknown on this machine")
    libc = ctypes.CDLL(None, use_errno=True)
    how = _OpenHow(flags, 0, _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
    fd = libc.syscall(_SYS_OPENAT2, dirfd, os.fsencode(rel), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), rel)
    return fd


def _open_nofollow_walk(dirfd: int, parts: tuple[str, ...], flags: int) -> int:
    """Fallback without openat2: every component opened with O_NOFOLLOW (no symlink at all)."""
    fd = os.dup(dirfd)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            f = (flags if last else os.O_RDONLY | os.O_DIRECTORY) | os.O_NOFOLLOW | os.O_CLOEXEC
            nxt = os.open(part, f, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_beneath(root: str | os.PathLike, name: str | os.PathLike) -> int:
    """Open the regular file ``name`` for reading, confined to ``root``, and return its fd.

    The returned descriptor is what later reads use: swapping the path for a symlink after
    this call changes nothing. Raises ValueError for a name that escapes, is not a regular
    file or cannot be opened.
    """
    pure = _check_name(name)
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    rootfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fd = _openat2(rootfd, str(pure), flags)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                raise ValueError(f"path {os.fspath(name)!r} leads outside the root") from None
            if exc.errno not in (errno.ENOSYS, errno.EPERM):  # EPERM: seccomp in some sandboxes
                raise ValueError(f"cannot open {os.fspath(name)!r}: {exc.strerror}") from None
            try:
                fd = _open_nofollow_walk(rootfd, pure.parts, flags)
            except OSError as exc2:
                if exc2.errno == errno.ELOOP or exc2.errno == errno.ENOTDIR:
                    raise ValueError(f"path {os.fspath(name)!r} goes through a symlink") from None
                raise ValueError(f"cannot open {os.fspath(name)!r}: {exc2.strerror}") from None
    finally:
        os.close(rootfd)
    try:
        import stat

        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"audio source {os.fspath(name)!r} is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd
