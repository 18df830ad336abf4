"""Confine user-supplied names to a root directory.

Output names come from notebook users and HTTP requests; a name like
``../../etc`` or a symlink planted inside the output root must not let us
write elsewhere on disk.
"""

from __future__ import annotations

import os
import pathlib

__all__ = ["resolve_under", "ensure_dir_under"]


def _check_name(name: str | os.PathLike) -> pathlib.PurePath:
    raw = os.fspath(name)
    if not isinstance(raw, str):
        # bytes paths would bypass the string checks below
        raise ValueError(f"path {raw!r} must be str, not {type(raw).__name__}")
    if raw.strip() == "":
        raise ValueError(f"path {raw!r} is empty")
    pure = pathlib.PurePath(raw)
    # PureWindowsPath catches "C:\\x" / "\\\\server" even when running on POSIX
    if pure.is_absolute() or pathlib.PureWindowsPath(raw).is_absolute() or raw.startswith(("/", "\\")):
        raise ValueError(f"path {raw!r} is absolute; expected a name relative to the root")
    # Split on both separators so "a\\..\\b" is rejected on every OS.
    if ".." in raw.replace("\\", "/").split("/"):
        raise ValueError(f"path {raw!r} contains a '..' component")
    return pure


def resolve_under(root: str | os.PathLike, name: str | os.PathLike) -> pathlib.Path:
    """Return the resolved path of ``name`` inside ``root``.

    Raises ValueError naming the offending path if ``name`` is absolute,
    empty, contains ``..`` or resolves (following symlinks) outside ``root``.
    """
    pure = _check_name(name)
    root_resolved = pathlib.Path(root).resolve(strict=False)
    target = (root_resolved / pure).resolve(strict=False)
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
