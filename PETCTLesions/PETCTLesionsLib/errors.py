"""The library's one error contract: what it raises when it decides something a user must read.

Every error the library raises on purpose is a :class:`PETCTLesionsError`; its message names the
file, option or value at fault and what to do (never a traceback's words). The subclasses say
which kind of decision it was, and that kind alone chooses what a front end does:

- :class:`InputError` (also a ``ValueError``): the input cannot be used as it is: a DICOM file,
  a NIfTI file, a VOC file, a dataset, an option's value. The CLI refuses (exit 2); the module
  shows the message in a dialog.
- :class:`ModelFileError` (an :class:`InputError`): a model file or manifest that cannot be used.
- :class:`OutputExistsError` (also a ``FileExistsError``): a file would be replaced and the user
  did not ask for it (``--overwrite``). Its ``hint`` says whether the message already tells how to
  replace it; where it does not, a front end adds its own way (the CLI: "(--overwrite replaces it)").
- :class:`WriteError` (also an ``OSError``): a file could not be written; :class:`NoSpaceError`:
  because the disk or quota is full.
- :class:`SetupError`: this computer lacks what the job needs (a package such as PyTorch or
  slicer-core, an OpenGL context for offscreen pictures); the message says what to install.
- :class:`Cancelled`: the user cancelled; nothing was returned or written (the CLI: exit 130, as
  for Ctrl-C). Code that catches :class:`PETCTLesionsError` to report a refusal and go on (one
  study of many) lets it through first: a cancel stops the whole job.

Anything else that escapes the library (a ``KeyError``, an ``AttributeError``, a ``ValueError``
from numpy) is a bug: front ends show it as one, with its traceback, and never as a refusal.
Operating-system errors (``OSError`` that is not a :class:`WriteError`: a folder that cannot be
read, a file that vanished) are the environment's, not the library's: front ends show their
message too.

Modules keep their own subclasses where a caller tells them apart (``DicomSeriesError``,
``SUVError``, ``NnUNetError``, ...); each derives from one class here.
"""

from __future__ import annotations

import os
from typing import Union

#: Where a user reports a bug (an error that is not a :class:`PETCTLesionsError`).
ISSUES_URL = "https://github.com/PETCTLesions/SlicerPETCTLesions/issues"


class PETCTLesionsError(Exception):
    """An error the library raised on purpose; ``str(error)`` is the whole message for the user."""


class InputError(PETCTLesionsError, ValueError):
    """The input (a file, a dataset, an option's value) cannot be used; the message names it."""


class ModelFileError(InputError):
    """A model file or manifest that cannot be used (missing, damaged, not ours, wrong values)."""


class OutputExistsError(PETCTLesionsError, FileExistsError):
    """A file is in the way and replacing it was not asked for.

    ``hint`` is the end of the message that tells how to replace it (or where else to write), when
    the refusing code knows it; empty, a front end appends its own way (the CLI's ``--overwrite``,
    the module's check box).
    """

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message + hint)
        self.hint = hint


class WriteError(PETCTLesionsError, OSError):
    """A file could not be written; the message names the file through ``template`` ("... {path} ...").

    ``strerror`` is the whole message, so that code showing ``error.strerror`` says it too, and
    :func:`fileio.atomic_output` names the target where the message named its temporary file
    (:meth:`naming`).
    """

    def __init__(self, code: int, path: Union[str, os.PathLike[str]], template: str) -> None:
        self.template = template
        super().__init__(code, template.replace("{path}", str(path)), str(path))

    def __str__(self) -> str:
        return str(self.strerror)

    def naming(self, path: Union[str, os.PathLike[str]]) -> WriteError:
        """The same error naming ``path`` instead."""
        return type(self)(self.errno, path, self.template)


class NoSpaceError(WriteError):
    """The disk or the user's quota is full."""


class SetupError(PETCTLesionsError):
    """This computer lacks what the job needs (a package, an OpenGL context); the message says what to install."""


class Cancelled(PETCTLesionsError):  # noqa: N818 - it is what happened, not a failure
    """The user cancelled; nothing was returned or written."""
