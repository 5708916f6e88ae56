"""Display conventions shared by the Slicer views and the PNG pictures.

The CT windows are the ones the Lung-PET-CT-Dx dataset names (Slicer's own CT-Lung preset
is L -500, so the lung window is the project's own). The PET window is in SUVbw.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

# name -> (window width, window level) in HU
CT_WINDOW_PRESETS: Dict[str, Tuple[float, float]] = {
    "Mediastinum": (350.0, 40.0),
    "Lung": (1400.0, -700.0),
    "Bone": (1500.0, 450.0),
}
DEFAULT_CT_PRESET = "Mediastinum"
# PET colour tables Slicer provides (procedural colour nodes present in every scene).
PET_COLORMAPS: Tuple[str, ...] = ("PET-Heat", "PET-Rainbow2", "PET-DICOM")
DEFAULT_PET_COLORMAP = "PET-Heat"
DEFAULT_PET_OPACITY = 0.5
# (min, max) SUV mapped onto the PET colour map by default.
DEFAULT_SUV_WINDOW: Tuple[float, float] = (0.0, 10.0)


def window_to_unit(values: np.ndarray, width: float, level: float) -> np.ndarray:
    """Map values through a window (width, level) onto [0, 1], clipping outside."""
    low = level - width / 2.0
    return np.clip((np.asarray(values, dtype=np.float32) - low) / float(width), 0.0, 1.0)


def heat_colors(unit: np.ndarray) -> np.ndarray:
    """A black-red-yellow-white ramp (like Slicer's PET-Heat) for values in [0, 1]: RGB floats."""
    unit = np.clip(np.asarray(unit, dtype=np.float32), 0.0, 1.0)
    red = np.clip(unit * 3.0, 0.0, 1.0)
    green = np.clip(unit * 3.0 - 1.0, 0.0, 1.0)
    blue = np.clip(unit * 3.0 - 2.0, 0.0, 1.0)
    return np.stack([red, green, blue], axis=-1)
