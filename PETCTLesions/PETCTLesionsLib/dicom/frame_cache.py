"""The frames of a compressed multi-frame file, decoded once per series read.

GDCM (inside SimpleITK) decodes a compressed multi-frame file whole: it has no call for one
frame. An Enhanced CT holds its whole series in one such file, and :mod:`.series` reads it
frame by frame (each frame is a slice, placed and rescaled on its own), so each frame would
decode the whole file again: n frames, n whole-file decodes. :class:`DecodedFrames` keeps the
file it decoded last (GDCM's image, no copy) for the next frames, and the error of a file that
failed, so that the other decoding threads do not try it again.

A :class:`DecodedFrames` belongs to one series read (:func:`.series.read_series_image` makes
one for its slices): nothing it holds outlives the read, and reads running at the same time
share nothing. :func:`decode_frame` is the reference path: one frame, decoded from the whole
file on its own; the cache must give what it gives (``Testing/Python/test_speedups.py``).

Measured (``Testing/Benchmarks/benchmark_speedups.py``, 2-core machine, load average 1.2,
2026-12-06, median of 3): the 32 frames of a 512 x 512 JPEG Lossless multi-frame CT in 0.25 s with
the cache, 7.3 s without (30x: the gain is the number of frames, so a 300-frame Enhanced CT would
take minutes without it).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk

Decoder = Callable[[Path], sitk.Image]  # every frame of a file, as one image


def frame_of(image: sitk.Image, index: int) -> np.ndarray:
    """Frame ``index`` of a decoded file, copied out of GDCM's image."""
    values = sitk.GetArrayViewFromImage(image)
    return np.array(values[index] if values.ndim == 3 else values)


def decode_frame(decode: Decoder, path: Path, index: int) -> np.ndarray:
    """The reference path: frame ``index`` of ``path``, decoding the whole file for it."""
    return frame_of(decode(path), index)


class DecodedFrames:
    """The file decoded last during one series read, kept for its next frames (thread-safe)."""

    def __init__(self, decode: Decoder) -> None:
        self._decode = decode
        self._lock = threading.Lock()
        self._path: Optional[Path] = None
        self._image: Optional[sitk.Image] = None
        self._error: Optional[Exception] = None

    def frame(self, path: Path, index: int) -> np.ndarray:
        """Frame ``index`` of ``path``; the file is decoded when it is not the one kept."""
        with self._lock:
            if self._path != path:
                self._image, self._error, self._path = None, None, path  # free the previous file first
                try:
                    self._image = self._decode(path)
                except Exception as error:  # kept: every frame of the file reports it
                    self._error = error
            if self._error is not None:
                raise self._error
            return frame_of(self._image, index)  # type: ignore[arg-type]
