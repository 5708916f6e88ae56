"""The MRML layer: turns PETCTLesionsLib's arrays and images into Slicer nodes and back.

Everything here imports ``slicer``. Inside the Slicer application that is Slicer itself;
headless (command line, tests) it is the ``slicer-core`` wheel from PyPI, set up by
:func:`PETCTLesionsLib.mrml.headless.ensure_scene`.
"""
