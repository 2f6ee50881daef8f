"""Masked vectors on the wire: ceil(bits/8) little-endian bytes per entry (both sides)."""

from __future__ import annotations

import numpy as np

from crypto.prg import dtype_for_bits
from protocol.errors import MalformedMessage


def entry_bytes(bits: int) -> int:
    """Bytes per entry on the wire for the ring Z_{2^bits}."""
    return (bits + 7) // 8


def reduce_in_place(vec: np.ndarray, bits: int) -> np.ndarray:
    """``vec`` mod 2^bits, in place (a no-op when bits equals the word width)."""
    if bits < vec.dtype.itemsize * 8:
        np.bitwise_and(vec, vec.dtype.type((1 << bits) - 1), out=vec)
    return vec


def pack(vec: np.ndarray, bits: int) -> bytes:
    """Entries of ``vec`` (already < 2^bits) as ceil(bits/8) little-endian bytes each."""
    dtype = dtype_for_bits(bits)
    le = np.ascontiguousarray(vec, dtype=dtype.newbyteorder("<"))
    width = entry_bytes(bits)
    if width == dtype.itemsize:
        return le.tobytes()
    return le.view(np.uint8).reshape(-1, dtype.itemsize)[:, :width].tobytes()


def unpack(data: bytes, length: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack`; raises :class:`MalformedMessage` on a wrong size or width."""
    dtype = dtype_for_bits(bits)
    width = entry_bytes(bits)
    if len(data) != length * width:
        raise MalformedMessage(f"masked vector must be {length * width} bytes, got {len(data)}")
    if width == dtype.itemsize:
        out = np.frombuffer(data, dtype=dtype.newbyteorder("<")).astype(dtype)
    else:
        raw = np.zeros((length, dtype.itemsize), dtype=np.uint8)
        raw[:, :width] = np.frombuffer(data, dtype=np.uint8).reshape(length, width)
        out = raw.view(dtype.newbyteorder("<")).reshape(length).astype(dtype)
    if bits % 8 and bool(np.any(out >> dtype.type(bits))):
        raise MalformedMessage(f"masked vector has entries >= 2^{bits}")
    return out
