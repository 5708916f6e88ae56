"""One progress and cancel mechanism for all long work (scanning, loading, the model, training).

A long function takes two optional callbacks, the same everywhere:

- ``progress(fraction, message)``: ``fraction`` in [0, 1] of this function's own work, ``message``
  what it is doing, for a progress bar and a status line. Called from the working thread.
- ``cancel()``: returns True once the user asked to stop. The function checks it between steps
  (:func:`check_cancel`) and raises :class:`errors.Cancelled`, leaving nothing half done.

A function that calls another for part of its work hands it :func:`sub_progress`, which maps the
callee's 0..1 onto the caller's share.
"""

from __future__ import annotations

from typing import Callable, Optional

from .errors import Cancelled

ProgressCallback = Callable[[float, str], None]
CancelCallback = Callable[[], bool]

__all__ = ["CancelCallback", "Cancelled", "ProgressCallback", "check_cancel", "report", "sub_progress"]


def check_cancel(cancel: Optional[CancelCallback], what: str = "cancelled by the user") -> None:
    """Raise :class:`errors.Cancelled` when the caller's ``cancel()`` says so."""
    if cancel is not None and cancel():
        raise Cancelled(what)


def report(progress: Optional[ProgressCallback], fraction: float, message: str) -> None:
    """Call ``progress`` when there is one."""
    if progress is not None:
        progress(fraction, message)


def sub_progress(progress: Optional[ProgressCallback], start: float, stop: float) -> Optional[ProgressCallback]:
    """``progress`` for a part of the work that runs from ``start`` to ``stop`` of the whole."""
    if progress is None:
        return None

    def part(fraction: float, message: str) -> None:
        progress(start + (stop - start) * fraction, message)

    return part
