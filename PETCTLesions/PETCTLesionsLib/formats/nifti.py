"""NIfTI files: read only when whole and intact (written by :mod:`.parallel_gzip`).

Reading (:func:`read_nifti`): SimpleITK (ITK's nifti1_io) reads a short or damaged file without a
word: missing voxels become 0, a damaged deflate stream gives whatever it decodes (a label cut to
90% lost 114 of 877 voxels, 64 flipped bytes in a PET gave SUVs of 3e38), and NaN or infinite
floats become 0. :func:`read_nifti` checks the file itself while SimpleITK reads it and refuses a
damaged one with :class:`NiftiError`, naming the file and the damage.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

_NIFTI_MAGIC = {348: b"n+1\0", 540: b"n+2\0"}  # sizeof_hdr -> magic of a single-file NIfTI-1 / NIfTI-2
_NIFTI_PAIR_MAGIC = (b"ni1\0", b"ni2\0")  # a header whose voxels are in a separate .img file
_NIFTI_HEADER_READ = 540
_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes FLOAT32, FLOAT64
# Bytes per voxel of each NIfTI-1 datatype code (nifti1.h). nifti1_io (ITK's reader) sizes the voxels by
# the datatype and ignores bitpix, so a file whose bitpix is wrong is read right: size it the same way.
_NIFTI_DATATYPE_BYTES = {
    2: 1,  # uint8
    4: 2,  # int16
    8: 4,  # int32
    16: 4,  # float32
    32: 8,  # complex64
    64: 8,  # float64
    128: 3,  # rgb24
    256: 1,  # int8
    512: 2,  # uint16
    768: 4,  # uint32
    1024: 8,  # int64
    1280: 8,  # uint64
    1536: 16,  # float128
    1792: 16,  # complex128
    2048: 32,  # complex256
    2304: 4,  # rgba32
}
_GZIP_MAGIC = b"\x1f\x8b"
_READ_CHUNK_BYTES = 1 << 20  # file bytes read at a time
# Decompressed bytes held at a time: a label deflates about 1000:1, so one read chunk could otherwise
# inflate to a gigabyte at once.
_INFLATE_CHUNK_BYTES = 8 << 20
_COPY_AGAIN = "copy or export it again from its source"
# What SimpleITK makes of a NaN voxel, and what to put there instead, by channel. Some tools mask a PET
# outside its field of view with NaN; SimpleITK reads it as 0 without a word, and so would a NaN inside
# the body, so both are refused with the fix (read_case has no way to warn).
_NON_FINITE_FIX = {
    "": "which SimpleITK would read as 0; replace them where the file was made",
    "ct": "which SimpleITK would read as 0 HU, water; replace NaN by -1000 (air) where the file was made",
    "pet": (
        "which SimpleITK would read as SUV 0; replace NaN by 0 where the file was made (e.g. where it masks "
        "voxels outside the field of view)"
    ),
}


class NiftiError(InputError):
    """A NIfTI file is unusable (not NIfTI, cut short, damaged, NaN voxels); the message names the file and why."""


@dataclass(frozen=True)
class NiftiLayout:
    """What a NIfTI header says about the bytes of its file: voxel data from ``vox_offset`` on."""

    byte_order: str  # "<" little or ">" big endian
    dims: Tuple[int, ...]  # dim[1] .. dim[dim[0]]: i, j, k (and more)
    datatype: int
    bits_per_voxel: int  # from the datatype; bitpix only for a datatype code nifti1.h does not define
    vox_offset: int

    @property
    def voxels(self) -> int:
        return int(np.prod(self.dims, dtype=np.int64))

    @property
    def file_bytes(self) -> int:
        """The bytes of a whole file (uncompressed): the header and extensions, then every voxel."""
        return self.vox_offset + (self.voxels * self.bits_per_voxel + 7) // 8

    def describe(self) -> str:
        shape = " x ".join(str(d) for d in self.dims)
        return f"{self.vox_offset} + {shape} voxels of {self.bits_per_voxel / 8:g} byte(s)"

    def float_type(self) -> Optional[np.dtype]:
        code = _NIFTI_FLOAT_TYPES.get(self.datatype)
        return None if code is None else np.dtype(self.byte_order + code)


def read_nifti(path: Path, channel: Optional[str] = None) -> sitk.Image:
    """Read a .nii or .nii.gz file with SimpleITK after checking that it is whole and intact.

    Refused with :class:`NiftiError` naming the file and the damage: a gzip stream that ends
    early, fails its CRC-32 or size check or cannot be inflated; bytes after the gzip data other
    than NUL padding, a damaged or concatenated file (several gzip members, as ``cat`` or some
    pigz modes write, are read); a file shorter than its header describes (vox_offset + voxels x
    the datatype's bytes per voxel); NaN or infinite voxels, which SimpleITK (2.2 and 2.5 alike)
    reads as 0. A file longer than its header describes is read, as every NIfTI reader reads it:
    the voxels are those the header describes, the bytes after them are not looked at.
    ``channel`` ("ct" or "pet") says in the NaN message what to replace NaN by.

    Cost: the data are inflated once more (Python's zlib, streaming, 8 MiB at a time, no second
    copy) in a thread while SimpleITK reads the file: about as much CPU time again as SimpleITK's
    read (a whole-body PET, 400 x 400 x 326 float32: 0.8 s more), spent beside it where a core is
    free. A file whose gzip size field disagrees with its header (cut short, or several gzip
    members) is checked first, before SimpleITK allocates what the header claims.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == _GZIP_MAGIC
        try:
            layout = _nifti_layout(_nifti_header(handle, gzipped, path), path)
        except NiftiError:
            if gzipped:  # a damaged deflate stream can decode to a garbled header: say what is wrong
                handle.seek(0)
                _inflate_members(handle, path, lambda data: None)
            raise
        size = os.fstat(handle.fileno()).st_size
        handle.seek(max(0, size - 4))
        gzip_size_field = int.from_bytes(handle.read(4), "little")  # RFC 1952 ISIZE: the length mod 2^32
    if not gzipped and size < layout.file_bytes:
        raise _cut_short(path, layout, size)
    non_finite_fix = _NON_FINITE_FIX.get(channel or "", _NON_FINITE_FIX[""])
    if gzipped and gzip_size_field != layout.file_bytes & 0xFFFFFFFF:
        # Cut short, several gzip members or longer than described: checked before SimpleITK
        # allocates what the header claims.
        _check_nifti_data(path, layout, gzipped, non_finite_fix)
        return _read_with_simpleitk(path, None)
    stream_check = gzipped or layout.float_type() is not None
    with ThreadPoolExecutor(1) as pool:
        check = pool.submit(_check_nifti_data, path, layout, gzipped, non_finite_fix) if stream_check else None
        return _read_with_simpleitk(path, check)


def _read_with_simpleitk(path: Path, check: Optional[futures.Future]) -> sitk.Image:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        if check is not None:
            check.result()  # a damage it found explains SimpleITK's error better than SimpleITK does
        raise NiftiError(f"{path}: cannot be read as an image ({str(error).strip().splitlines()[-1]})") from error
    if check is not None:
        check.result()
    return image


def _nifti_header(handle, gzipped: bool, path: Path) -> bytes:
    """The first bytes of the NIfTI content (decompressed); enough for a NIfTI-2 header where there are."""
    handle.seek(0)
    if not gzipped:
        return handle.read(_NIFTI_HEADER_READ)
    header = b""
    try:
        with gzip.GzipFile(fileobj=handle, mode="rb") as content:  # reads only as far as it needs to
            while len(header) < _NIFTI_HEADER_READ:
                more = content.read(_NIFTI_HEADER_READ - len(header))
                if not more:
                    break  # a tiny file: the layout check says whether the header is whole
                header += more
    except EOFError:
        pass  # cut short: the layout check (inside the header) or the stream check (after it) says so
    except (zlib.error, gzip.BadGzipFile) as error:
        raise _damage(path, _zlib_problem(error)) from error
    return header


def _nifti_layout(header: bytes, path: Path) -> NiftiLayout:
    """The header's layout, or NiftiError when the file does not start with a single-file NIfTI header."""
    header_bytes, byte_order = 0, "<"
    for byte_order in "<>":  # sizeof_hdr in the file's byte order tells the byte order
        header_bytes = struct.unpack(byte_order + "i", header[:4])[0] if len(header) >= 4 else 0
        if header_bytes in _NIFTI_MAGIC:
            break
    else:
        raise NiftiError(f"{path}: not a NIfTI file (its header does not start with the NIfTI-1 or NIfTI-2 size)")
    if len(header) < header_bytes:
        raise NiftiError(
            f"{path}: the file is cut short: it ends inside its {header_bytes}-byte NIfTI header; {_COPY_AGAIN}"
        )
    if header_bytes == 348:
        magic = header[344:348]
        dim = struct.unpack(byte_order + "8h", header[40:56])
        datatype, bitpix = struct.unpack(byte_order + "2h", header[70:74])
        offset = struct.unpack(byte_order + "f", header[108:112])[0]
    else:
        magic = header[4:8]
        datatype, bitpix = struct.unpack(byte_order + "2h", header[12:16])
        dim = struct.unpack(byte_order + "8q", header[16:80])
        offset = struct.unpack(byte_order + "q", header[168:176])[0]
    if magic in _NIFTI_PAIR_MAGIC:
        raise NiftiError(f"{path}: a NIfTI header whose voxels are in a separate .img file; use a single-file .nii")
    if magic != _NIFTI_MAGIC[header_bytes]:
        raise NiftiError(f"{path}: not a NIfTI file (no NIfTI magic {_NIFTI_MAGIC[header_bytes]!r} in its header)")
    if not 1 <= dim[0] <= 7 or any(d < 1 for d in dim[1 : dim[0] + 1]):
        raise NiftiError(f"{path}: its NIfTI header gives impossible dimensions {list(dim)}; {_COPY_AGAIN}")
    bits = 8 * _NIFTI_DATATYPE_BYTES[datatype] if datatype in _NIFTI_DATATYPE_BYTES else bitpix
    if bits < 1 or not math.isfinite(offset):
        raise NiftiError(
            f"{path}: its NIfTI header gives datatype {datatype}, {bitpix} bits per voxel and vox_offset {offset}"
        )
    # As nifti1_io: the voxels start at vox_offset, but never inside the header.
    return NiftiLayout(byte_order, tuple(dim[1 : dim[0] + 1]), datatype, bits, max(int(offset), header_bytes))


def _check_nifti_data(path: Path, layout: NiftiLayout, gzipped: bool, non_finite_fix: str) -> None:
    """Read the whole file once (inflating it when gzipped) and raise NiftiError at the first damage;
    ``non_finite_fix`` ends the message on NaN voxels."""
    scan = _VoxelScan(layout)
    with open(path, "rb") as handle:
        if gzipped:
            _inflate_members(handle, path, scan.feed)
        else:
            while True:
                data = handle.read(_READ_CHUNK_BYTES)
                if not data:
                    break
                scan.feed(data)
    if scan.total < layout.file_bytes:
        raise _cut_short(path, layout, scan.total)
    if scan.non_finite:
        i_j_k = ", ".join(str(n) for n in scan.first_non_finite)
        raise NiftiError(
            f"{path}: {scan.non_finite} voxel(s) are NaN or infinite (the first at voxel ({i_j_k})), {non_finite_fix}"
        )


def _inflate_members(handle, path: Path, feed) -> None:
    """Inflate the file into ``feed``, 8 MiB at a time, with Python's gzip reader: it checks each
    member's CRC-32 and size, reads several members and skips NUL padding after the last."""
    try:
        with gzip.GzipFile(fileobj=handle, mode="rb") as content:
            while True:
                data = content.read(_INFLATE_CHUNK_BYTES)
                if not data:
                    return
                feed(data)
    except EOFError as error:
        size = os.fstat(handle.fileno()).st_size
        raise NiftiError(
            f"{path}: the file is cut short: its gzip data stop after {size} bytes, before the end of the "
            f"compressed stream; {_COPY_AGAIN}"
        ) from error
    except (zlib.error, gzip.BadGzipFile) as error:
        raise _damage(path, _zlib_problem(error)) from error


def _zlib_problem(error: Exception) -> str:
    text = str(error)  # zlib's words, or Python's gzip module's
    if "CRC check failed" in text or "incorrect data check" in text:
        return "its data do not match their gzip CRC-32 check"
    if "Incorrect length" in text or "incorrect length check" in text:
        return "its data length does not match the gzip size field"
    if "Not a gzipped file" in text:  # the file starts with gzip data: these are bytes after them
        return "bytes follow its gzip data and are not gzip"
    return f"its compressed data cannot be inflated ({text.split(':', 1)[-1].strip()})"


def _damage(path: Path, problem: str) -> NiftiError:
    return NiftiError(f"{path}: the file is damaged: {problem}; {_COPY_AGAIN}")


def _cut_short(path: Path, layout: NiftiLayout, actual: int) -> NiftiError:
    return NiftiError(
        f"{path}: the file is cut short: its NIfTI header describes {layout.file_bytes} bytes "
        f"({layout.describe()}) but it holds {actual}; {_COPY_AGAIN}"
    )


class _VoxelScan:
    """Counts the bytes of a NIfTI file's content as they stream past and, for floating-point
    voxels, those that are NaN or infinite (np.isfinite on 8 MiB at a time)."""

    def __init__(self, layout: NiftiLayout) -> None:
        self.layout = layout
        self.total = 0
        self.non_finite = 0
        self.first_non_finite: Tuple[int, ...] = ()
        self._float = layout.float_type()
        self._scanned = 0  # voxels checked so far
        self._carry = b""  # the start of a voxel split between two chunks

    def feed(self, data: bytes) -> None:
        start, self.total = self.total, self.total + len(data)
        if self._float is None:
            return
        end_of_voxels = self.layout.vox_offset + self.layout.voxels * self._float.itemsize
        low, high = max(start, self.layout.vox_offset), min(self.total, end_of_voxels)
        if low >= high:
            return
        chunk = self._carry + data[low - start : high - start]
        whole = len(chunk) // self._float.itemsize
        values = np.frombuffer(chunk, self._float, count=whole)
        finite = np.isfinite(values)
        if not finite.all():
            if not self.non_finite:
                first = self._scanned + int(np.argmin(finite))
                self.first_non_finite = tuple(int(n) for n in np.unravel_index(first, self.layout.dims, order="F"))
            self.non_finite += int(finite.size - np.count_nonzero(finite))
        self._scanned += whole
        self._carry = chunk[whole * self._float.itemsize :]
