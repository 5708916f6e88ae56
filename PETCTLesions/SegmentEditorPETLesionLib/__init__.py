"""The "PET lesion" Segment Editor effect, registered by the PETCTLesions module (see SegmentEditorEffect.py).

Slicer loads the effect from its file (``qSlicerSegmentEditorScriptedEffect.setPythonSource``); nothing
is imported here, so that importing this folder never needs the Segment Editor.
"""
