"""Interactive correction: the reader's prompts (click, remove, box, split) turned into lesion edits.

``prompts`` is the prompt engine (PET + lesion map + a click -> a :class:`~.prompts.LesionEdit`);
``mip`` finds the hottest voxel along a ray through a PET maximum-intensity projection;
``click_simulation`` replays simulated readers' clicks for the interactive benchmark;
``editor_options`` holds the "PET lesion" Segment Editor effect's options and click sequences.
Plain Python (numpy, SimpleITK): no Qt, no ``slicer``. Import the submodules directly.
"""
