"""The library's one error contract: what it raises when it decides something a user must read.

Every error the library raises on purpose is a :class:`PETCTLesionsError`; its message names the
file, option or value at fault and what to do (never a traceback's words). The subclasses say
which kind of decision it was, and that kind alone chooses what a front end does:

- :class:`InputError` (also a ``ValueError``): the input cannot be used as it is: a DICOM file,
  a NIfTI file, a VOC file, a dataset, an option's value. The CLI refuses (exit 2); the module
  shows the message in a dialog.
- :class:`ModelFileError` (an :class:`InputError`): a model file or manifest that cannot be used.
- :class:`OutputExistsError` (also a ``FileExistsError``): a file would be replaced and the user
  did not ask for it (``--overwrite``).
- :class:`WriteError` (also an ``OSError``): a file could not be written; :class:`NoSpaceError`:
  because the disk or quota is full.
- :class:`Cancelled`: the user cancelled; nothing was returned or written.

Anything else that escapes the library (a ``KeyError``, an ``AttributeError``, a ``ValueError``
from numpy) is a bug: front ends show it as one, with its traceback, and never as a refusal.
Operating-system errors (``OSError`` that is not a :class:`WriteError`: a folder that cannot be
read, a file that vanished) are the environment's, not the library's: front ends show their
message too.

Modules keep their own subclasses where a caller tells them apart (``DicomSeriesError``,
``SUVError``, ``NnUNetError``, ...); each derives from one class here.
"""

from __future__ import annotations


class PETCTLesionsError(Exception):
    """An error the library raised on purpose; ``str(error)`` is the whole message for the user."""


class InputError(PETCTLesionsError, ValueError):
    """The input (a file, a dataset, an option's value) cannot be used; the message names it."""


class ModelFileError(InputError):
    """A model file or manifest that cannot be used (missing, damaged, not ours, wrong values)."""


class OutputExistsError(PETCTLesionsError, FileExistsError):
    """A file is in the way and replacing it was not asked for."""


class WriteError(PETCTLesionsError, OSError):
    """A file could not be written. ``strerror`` is the whole message (it names the file)."""


class NoSpaceError(WriteError):
    """The disk or the user's quota is full."""


class Cancelled(PETCTLesionsError):  # noqa: N818 - it is what happened, not a failure
    """The user cancelled; nothing was returned or written."""
