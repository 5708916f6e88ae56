"""DICOM in: from files to SimpleITK images, nothing above them.

``part10`` reads one file's header into a slice header (a hand-written Part 10 reader);
``index`` scans files and folders and groups their slices into studies and series (Enhanced CT
frames become slices, localizers are set aside); ``pairing`` ranks a study's PET series and pairs
each with a CT (and measures how much of the PET the CT covers); ``series`` builds one series as a
SimpleITK image (slice order, spacing checks, rescale, decoding), each compressed multi-frame
file decoded once per read (``frame_cache``); ``suv`` computes the SUVbw factors from the PET
headers. Import the submodules directly.
"""
