"""PETCTLesionsLib: the GUI-free work of the PETCTLesions Slicer extension.

Everything here runs on plain Python with numpy, SimpleITK, pydicom (and torch for the
model). Nothing imports Qt or ``slicer``; the MRML layer lives in the ``mrml`` subpackage
and is only imported by code that needs Slicer nodes.
"""

__version__ = "0.1.0"
