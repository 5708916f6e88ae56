"""Safe writing of user-visible files: every export goes to a temporary file beside the
target and is renamed into place, so a crash or a full disk never leaves half a file, and
an existing file is only replaced when the caller says so. Files that belong together (one
study's results) are staged in a hidden folder and moved into place as one unit
(:class:`StagedOutputs`). A full disk reads the same from every writer: "no space left on <path>"."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Union

from .errors import InputError, NoSpaceError, OutputExistsError, WriteError

try:
    import fcntl
except ImportError:  # Windows: staging folders age out instead (see remove_stale_staging)
    fcntl = None  # type: ignore[assignment]

PathLike = Union[str, "os.PathLike[str]"]

# Characters that are unsafe in file names on Windows, macOS or Linux, plus path separators.
_UNSAFE_NAME_CHARS = re.compile(r'[\\/:*?"<>|\x00-\x1f]')

# A full disk and a full quota are the same problem to a user: no room for the file.
_NO_SPACE_ERRNOS = frozenset(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None)


def no_space_error(error: OSError, path: PathLike) -> OSError:
    """``error`` as a :class:`NoSpaceError` naming ``path`` when it says the disk or quota is full, else ``error``
    (a :class:`WriteError` as it is: it says what happened)."""
    if isinstance(error, WriteError) or error.errno not in _NO_SPACE_ERRNOS:
        return error
    return _no_space(error.errno, path)


def _no_space(code: int, path: PathLike) -> NoSpaceError:
    quota = " (disk quota exceeded)" if code != errno.ENOSPC else ""
    return NoSpaceError(
        code, path, f"no space left on {{path}}{quota}; free some space or choose another output folder"
    )


def _raise_as_no_space(error: OSError, path: PathLike) -> None:
    """Raise ``error`` itself, or as a :class:`NoSpaceError` naming ``path`` when the disk is full."""
    mapped = no_space_error(error, path)
    if mapped is error:
        raise error
    raise mapped from error


def itk_write_error(error: RuntimeError, path: PathLike) -> WriteError:
    """A SimpleITK/ITK writer's exception as a :class:`WriteError` naming ``path`` (a full disk: :class:`NoSpaceError`).

    ITK ends its message with "Reason: <strerror of the C library>", which is this process's
    C library, so comparing with ``os.strerror`` recognises a full disk in any locale.
    """
    reason = str(error).rsplit("Reason:", 1)[-1].strip() if "Reason:" in str(error) else ""
    for code in _NO_SPACE_ERRNOS:
        if reason == os.strerror(code):
            return _no_space(code, path)
    last_line = reason or next(iter(str(error).strip().splitlines()[-1:]), "").strip() or "unknown error"
    return WriteError(errno.EIO, path, f"{{path}}: cannot be written ({last_line})")


def check_written_size(path: PathLike, expected_bytes: int, target: Optional[PathLike] = None) -> None:
    """Raise a :class:`WriteError` when a writer that reports no error left ``path`` short of ``expected_bytes``.

    ITK's NIfTI writer prints "wrote only N of M bytes" and returns normally when the disk is
    full: the file is then empty or cut. To name the real cause, the missing bytes are written
    once more here; the error the system gives for that (a full disk, a quota, a file size
    limit) is the error raised. It names ``target`` (default ``path``): the file ``path`` is
    written for, when ``path`` is an intermediate one.
    """
    written = os.path.getsize(path)
    if written >= expected_bytes:
        return
    shown = path if target is None else target
    short = f"{{path}}: only {written} of {expected_bytes} bytes written"
    try:
        with open(path, "ab") as stream:
            stream.write(bytes(expected_bytes - written))
            stream.flush()
            os.fsync(stream.fileno())
    except OSError as error:
        if error.errno in _NO_SPACE_ERRNOS:
            raise _no_space(error.errno, shown) from error
        raise WriteError(error.errno or errno.EIO, shown, f"{short} ({error.strerror})") from error
    raise WriteError(errno.EIO, shown, f"{short}, and the writer reported no error")


def refuse_overwriting(paths: Iterable[PathLike], overwrite: bool = False, why: str = "", hint: str = "") -> None:
    """Raise :class:`OutputExistsError` naming the first of ``paths`` that exists, unless ``overwrite``.

    ``why`` follows "already exists" (what the file is), ``hint`` the refusal (what to do).
    """
    if overwrite:
        return
    for path in paths:
        if Path(path).exists():
            raise OutputExistsError(f"{path}: already exists{why}; refusing to overwrite it", hint)


@contextlib.contextmanager
def atomic_output(path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The temporary name keeps the target's suffixes (``.nii.gz``, ``.xml``, ``.dcm``) so that
    writers that choose a format by extension (SimpleITK) still work. On any exception the
    temporary file is removed and the target is untouched; a full disk raises :class:`NoSpaceError`
    naming ``path``.
    """
    target = Path(path)
    refuse_overwriting([target], overwrite)
    tmp: Optional[Path] = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        suffix = "".join(target.suffixes)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem[:40]}.", suffix=".tmp" + suffix, dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        yield tmp
        # mkstemp creates 0600; an exported file gets the permissions any new file would get.
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, target)
    except OSError as error:
        _remove_quietly(tmp)
        # An error about the temporary file (opening, writing or renaming it) is about the target.
        named = _naming(error, target) if tmp is not None and str(tmp) in (error.filename, error.filename2) else error
        mapped = no_space_error(named, target)
        if mapped is error:
            raise
        raise mapped from error
    except BaseException:
        _remove_quietly(tmp)
        raise


def _remove_quietly(path: Optional[Path]) -> None:
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


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
        raise InputError(f"{what} {name!r} cannot be used as a file name (empty, path characters or control codes)")
    return name


def is_inside(path: PathLike, folder: PathLike) -> bool:
    """True when ``path`` is ``folder`` or lies under it, after resolving links (neither needs to exist)."""
    resolved, container = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    return resolved == container or container in resolved.parents


# ------------------------------------------------------------------------------ backups

BACKUP_MARK = ".bak-"


def backup_stamp() -> str:
    """The UTC time of one export, as its backups are named (``20261206T153000Z``)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def back_up(path: PathLike, stamp: str, move: bool = False) -> Path:
    """Keep the user's ``path`` beside itself as ``<name>.bak-<stamp>`` before an export replaces (a copy)
    or removes it (``move``); returns the backup's path. An existing backup is never replaced: a second
    one the same second gets ``-2``, ``-3``... The name no longer ends in ``.xml`` or ``.nii.gz``, so no
    reader (ours, nnU-Net's, LabelImg's) takes it for data."""
    source = Path(path)
    for attempt in range(1, 1000):
        suffix = "" if attempt == 1 else f"-{attempt}"
        backup = source.with_name(f"{source.name}{BACKUP_MARK}{stamp}{suffix}")
        if backup.exists():
            continue
        try:
            if move:
                os.replace(source, backup)  # same folder: a rename, the file whole or not moved
            else:
                with atomic_output(backup) as tmp:
                    shutil.copy2(source, tmp)
        except OSError as error:
            raise no_space_error(_naming(error, backup), backup) from error
        return backup
    raise OutputExistsError(f"{source}: too many backups named {source.name}{BACKUP_MARK}{stamp}-N; refusing")


# ------------------------------------------------------------------------------ staged units

STAGING_PREFIX = ".petct-staging-"
# A staging folder's process holds an exclusive lock on this file in it for the unit's whole life;
# the system releases it when the process ends, however it ends. Nothing else shows liveness across
# machines sharing a folder, containers sharing a host name, or pid namespaces.
STAGING_LOCK = "lock"
# Where locks cannot tell (no fcntl on Windows, a file system without flock): a unit lives seconds,
# minutes for a whole-body study's pictures; a staging folder a day old belongs to a killed process.
STALE_STAGING_S = 24 * 3600.0
# A staging folder without its lock file is being created (a moment) or was left by a process killed
# in that moment: left alone for this long.
UNLOCKED_STAGING_S = 3600.0
# An existing file that a unit replaces waits beside itself under this mark until the commit ends:
# on the same file system (a rename), hidden, and with the mark at the end so that no reader takes it
# for data (it no longer ends in .nii.gz, .xml, .csv or .png).
REPLACED_MARK = ".petct-replaced-"
_NO_FLOCK_ERRNOS = frozenset((errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL))  # flock on NFS, SMB, FUSE
_HELD_STAGING: Set[Path] = set()  # this process's live staging folders (an NFS flock does not exclude its owner)


class StagedOutputs:
    """Files that belong together (one study's results), written hidden and moved into place as one unit.

    Inside ``with StagedOutputs(root) as staging``: write each file to ``staging.path(target)``
    (``target`` anywhere under ``root``), then ``staging.commit(staged_paths)``. The staging folder
    ``root/.petct-staging-<random>/`` mirrors ``root``'s layout; its process holds the lock file in
    it while the unit lives. At the commit an existing target is first set aside beside itself
    (``.<name>.petct-replaced-<random>``), then the new file is moved in (a rename, or a copy to a
    hidden file beside the target and a rename where the target lies on another file system). Should
    a step (or the ``finish`` step) fail, the files moved in are taken back and the set-aside ones put
    back: the unit appears whole or not at all. A user's file never lives in the staging folder, and
    one that cannot be put back stays under its hidden name, which the error names. Leaving the block
    removes the staging folder; a process killed while staging leaves only that hidden folder, which
    is never in the way and which a later unit in ``root`` removes (:func:`remove_stale_staging`).
    """

    def __init__(self, root: PathLike, overwrite: bool = False) -> None:
        self.root = Path(root)
        self.overwrite = overwrite
        self.folder: Optional[Path] = None
        self._lock: Optional[int] = None  # the lock file's descriptor, open while the unit lives
        self._retired: List[Path] = []

    def __enter__(self) -> StagedOutputs:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            remove_stale_staging(self.root)
            self.folder = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.root))
            _HELD_STAGING.add(self.folder)
            self._lock = _take_staging_lock(self.folder)
        except OSError as error:
            self.__exit__(None, None, None)
            _raise_as_no_space(error, self.root)
        return self

    def __exit__(self, *exc_info) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)  # still locked: no other unit takes it for stale
            _HELD_STAGING.discard(self.folder)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    @property
    def _new(self) -> Path:
        assert self.folder is not None, "use StagedOutputs in a with block"
        return self.folder / "new"

    def path(self, target: PathLike) -> Path:
        """Where to write ``target`` (a path under ``root``) until the commit."""
        return self._new / self._relative(target)

    def target_of(self, staged: PathLike) -> Path:
        return self.root / Path(staged).relative_to(self._new)

    def retire(self, paths: Iterable[PathLike]) -> None:
        """Files of an earlier result that the new one replaces without naming them (with ``overwrite``):
        removed at the commit, put back if it fails. Only files under ``root`` are taken: a path with
        '..' in it (a crafted slice UID, say) is ignored, whatever it points to. Folders under ``root``
        that are links (to another disk) are followed: they are where the user keeps the results."""
        for path in map(Path, paths):
            if ".." not in path.parts and _is_under(path, self.root) and path.is_file():
                self._retired.append(path)

    def message(self, error: BaseException) -> str:
        """``error``'s text with each staged path named as the file it was to become (a full disk as such)."""
        if isinstance(error, OSError):
            error = no_space_error(error, error.filename or self.root)
        text = str(error)
        return text if self.folder is None else text.replace(str(self._new), str(self.root))

    def commit(self, staged: Sequence[PathLike], finish: Optional[Callable[[], object]] = None) -> List[Path]:
        """Move the ``staged`` files onto their targets, then run ``finish()`` (e.g. update an index
        file from the files now present); all of it or, on any failure, none of it. Returns the targets."""
        targets = [self.target_of(path) for path in staged]
        refuse_overwriting(targets, self.overwrite)
        placed: List[Path] = []  # targets that now hold the new file
        set_aside: Dict[Path, Path] = {}  # earlier file -> where it waits, recorded before anything takes its place
        created: List[Path] = []
        try:
            for path in self._retired:
                if path not in targets and path not in set_aside:
                    set_aside[path] = _set_aside(path)
            for source, target in zip(staged, targets):
                created.extend(_make_folders(target.parent, self.root))
                if target.is_file() or target.is_symlink():  # a folder in its place: the move names it
                    set_aside[target] = _set_aside(target)
                _move_into_place(Path(source), target)
                placed.append(target)
            if finish is not None:
                finish()
        except BaseException as error:
            problems = _roll_back(placed, set_aside, created)
            if problems and isinstance(error, Exception):
                text = f"{self.message(error)}; undoing the other files failed too: {'; '.join(problems)}"
                raise WriteError(getattr(error, "errno", None) or errno.EIO, self.root, text) from error
            if isinstance(error, OSError):
                _raise_as_no_space(error, error.filename or self.root)
            raise
        for aside in set_aside.values():
            with contextlib.suppress(OSError):  # a replaced file, hidden: harmless should it stay
                aside.unlink()
        return targets

    def _relative(self, path: PathLike) -> Path:
        path = Path(path)
        try:
            relative = path.relative_to(self.root)
        except ValueError:
            relative = None
        if relative is None or ".." in relative.parts:
            raise ValueError(f"{path}: not under the output folder {self.root}")
        return relative


def _is_under(path: Path, root: Path) -> bool:
    """True when ``path`` names a place under ``root`` as written (both made absolute, links not followed)."""
    try:
        Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
    except ValueError:
        return False
    return True


def _set_aside(path: Path) -> Path:
    """Rename ``path`` to a hidden name beside it (same folder: same file system); return that name."""
    aside = path.with_name(f".{path.name[:100]}{REPLACED_MARK}{secrets.token_hex(4)}")
    try:
        os.replace(path, aside)
    except OSError as error:
        raise _naming(error, path) from error
    return aside


def _move_into_place(source: Path, target: Path) -> None:
    """Rename the staged ``source`` onto ``target``; across file systems (a folder in OUT that is a link
    or a mount to another disk), where a rename cannot go, copy it to a hidden file beside ``target``
    and rename that: ``target`` still appears whole or not at all."""
    try:
        os.replace(source, target)
        return
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise _naming(error, target) from error
    copy: Optional[Path] = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name[:40]}.", suffix=".petct-copy", dir=target.parent)
        os.close(fd)
        copy = Path(name)
        shutil.copyfile(source, copy)
        shutil.copymode(source, copy)
        with open(copy, "r+b") as stream:
            os.fsync(stream.fileno())
        os.replace(copy, target)
    except OSError as error:
        _remove_quietly(copy)
        raise _naming(error, target) from error


def _roll_back(placed: List[Path], set_aside: Dict[Path, Path], created: List[Path]) -> List[str]:
    """Take the new files back, put the set-aside ones back; return what could not be undone, for the error."""
    problems = []
    for target in reversed(placed):
        if target not in set_aside:  # else putting the earlier file back replaces it in one rename
            problems.extend(_remove_new_file(target))
    for path, aside in reversed(list(set_aside.items())):
        try:
            os.replace(aside, path)
        except OSError as error:
            if path in placed:
                problems.extend(_remove_new_file(path))
            problems.append(f"your earlier {path} is kept as {aside} ({error.strerror or error}); rename it back")
    for folder in reversed(created):  # deepest last created: remove only what this unit made, if empty
        with contextlib.suppress(OSError):
            folder.rmdir()
    return problems


def _remove_new_file(path: Path) -> List[str]:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as error:
        return [f"{path}: could not be removed ({error.strerror or error}); remove it by hand"]
    return []


def _make_folders(folder: Path, root: Path) -> List[Path]:
    """Create ``folder`` (under ``root``); return the folders this call created, outermost first.

    Another run writing into the same ``root`` may create one of them at the same moment: it is
    then used, and not counted as this call's (a rollback removes only what this call made)."""
    missing = []
    while folder != root and not folder.exists():
        missing.append(folder)
        folder = folder.parent
    created = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue  # if it is a file, not a folder, moving the file into it names it
        created.append(path)
    return created


def _naming(error: OSError, path: PathLike) -> OSError:
    """``error`` naming ``path`` alone (the file it was for), not a temporary or set-aside name."""
    if isinstance(error, WriteError):
        return error.naming(path)
    if error.errno is None:
        return error
    return OSError(error.errno, error.strerror, str(path))  # OSError picks the subclass (PermissionError, ...)


def _take_staging_lock(folder: Path) -> Optional[int]:
    """Create ``folder``'s lock file, locked: its descriptor, to keep open; None where locks are missing.

    The file is locked under another name and then renamed: no other unit ever sees it unlocked.
    """
    pending = folder / f"{STAGING_LOCK}.new"
    fd = os.open(pending, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        locked = _lock(fd)
        os.replace(pending, folder / STAGING_LOCK)
    except BaseException:
        os.close(fd)
        raise
    if not locked:
        os.close(fd)  # nothing to hold (and Windows could not remove an open file): the folder ages out
        return None
    return fd


def _lock(fd: int) -> bool:
    """Take an exclusive lock on ``fd`` without waiting; False where locks are missing (Windows, a file
    system without flock). BlockingIOError when another process holds it."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise
    except OSError as error:
        if error.errno in _NO_FLOCK_ERRNOS:
            return False
        raise
    return True


def remove_stale_staging(root: PathLike) -> List[Path]:
    """Remove the staging folders in ``root`` that a killed process left; returns them.

    A folder is stale when the lock its process holds can be taken (the process is gone), or, where
    locks cannot tell (Windows, a file system without them), when it is older than
    :data:`STALE_STAGING_S`. A live one is left alone: two runs may write into one folder.
    """
    removed = []
    for entry in Path(root).iterdir():
        try:
            stale = entry.name.startswith(STAGING_PREFIX) and not entry.is_symlink() and _is_stale(entry)
        except OSError:  # another user's folder, say: never a reason not to write
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _is_stale(folder: Path) -> bool:
    if folder in _HELD_STAGING or not folder.is_dir():
        return False
    age = time.time() - folder.stat().st_mtime
    lock = folder / STAGING_LOCK
    if not os.path.exists(lock):  # being created (a moment), or left by a process killed in that moment
        return age > UNLOCKED_STAGING_S
    held = _lock_held(lock)
    return age > STALE_STAGING_S if held is None else not held


def _lock_held(lock: Path) -> Optional[bool]:
    """Whether a live process holds ``lock``; None where locks cannot tell (Windows, a file system
    without flock, another user's lock file that this one cannot open)."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return True  # its process is removing the folder now
    except OSError:
        return None
    try:
        return False if _lock(fd) else None
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)  # releases a lock taken here: the folder's removal needs none
