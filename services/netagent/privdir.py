"""The netagent's private directory (the state file's): created 0700 when absent, refused when anyone
but root could write into it (a controller that could write there could plant the state the agent
adopts at its next start)."""

from __future__ import annotations

import os
import stat

__all__ = ["UnsafeDirectory", "ensure_private_dir"]


class UnsafeDirectory(Exception):
    """The directory is not private to root; the message says why and what to do."""


def ensure_private_dir(path: str) -> None:
    """Creates `path` with mode 0700 (its missing parents 0755) when absent; UnsafeDirectory when it
    is not a directory, is not owned by root, or is group- or world-writable. A link is judged by what
    it points to."""
    if not os.path.lexists(path):
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, mode=0o755, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass  # created meanwhile: judged below like any existing directory
        else:
            os.chmod(path, 0o700)  # mkdir's mode went through the umask
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as e:
        raise UnsafeDirectory(f"{path}: {e.strerror}") from None
    where = path if real == os.path.abspath(path) else f"{path} (-> {real})"
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectory(f"{where}: not a directory")
    if st.st_uid != 0:
        raise UnsafeDirectory(
            f"{where}: owned by uid {st.st_uid}, not root; it must be private to the netagent"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeDirectory(
            f"{where}: mode {mode:04o} is group- or world-writable; it must be private to the netagent "
            "(chmod go-w, or mount a volume no controller mounts)"
        )
