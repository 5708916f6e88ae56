"""Safe writing of user-visible files: every export goes to a temporary file beside the
target and is renamed into place, so a crash or a full disk never leaves half a file, and
an existing file is only replaced when the caller says so."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]

# Characters that are unsafe in file names on Windows, macOS or Linux, plus path separators.
_UNSAFE_NAME_CHARS = re.compile(r'[\\/:*?"<>|\x00-\x1f]')


class OutputExistsError(FileExistsError):
    """Raised instead of silently overwriting a user's file."""


def refuse_overwriting(paths: Iterable[PathLike], overwrite: bool = False, why: str = "", hint: str = "") -> None:
    """Raise :class:`OutputExistsError` naming the first of ``paths`` that exists, unless ``overwrite``.

    ``why`` follows "already exists" (what the file is), ``hint`` the refusal (what to do).
    """
    if overwrite:
        return
    for path in paths:
        if Path(path).exists():
            raise OutputExistsError(f"{path}: already exists{why}; refusing to overwrite it{hint}")


@contextlib.contextmanager
def atomic_output(path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The temporary name keeps the target's suffixes (``.nii.gz``, ``.xml``, ``.dcm``) so that
    writers that choose a format by extension (SimpleITK) still work. On any exception the
    temporary file is removed and the target is untouched.
    """
    target = Path(path)
    refuse_overwriting([target], overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem[:40]}.", suffix=".tmp" + suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600; an exported file gets the permissions any new file would get.
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _current_umask() -> int:
    mask = os.umask(0)  # the only portable way to read the umask is to set it and put it back
    os.umask(mask)
    return mask


def atomic_write_bytes(path: PathLike, data: bytes, overwrite: bool = False) -> Path:
    with atomic_output(path, overwrite=overwrite) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return Path(path)


def atomic_write_text(path: PathLike, text: str, overwrite: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def is_safe_file_name(name: str) -> bool:
    """True when ``name`` can be used as a single file name (no separators, no '..')."""
    return bool(name) and name not in (".", "..") and not _UNSAFE_NAME_CHARS.search(name) and name == name.strip()


def check_safe_file_name(name: str, what: str = "name") -> str:
    if not is_safe_file_name(name):
        raise ValueError(f"{what} {name!r} cannot be used as a file name (empty, path characters or control codes)")
    return name
