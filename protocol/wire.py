"""Low-level binary encoding shared by every message (both sides).

Layout of every message: magic ``b"SF"``, a version byte, a type byte, then the fields in a
fixed order: unsigned integers big-endian, byte strings and lists behind a 4-byte length
or count. :class:`Reader` raises :class:`MalformedMessage` on any deviation (short data,
oversized lengths, trailing bytes) and never anything else.
"""

from __future__ import annotations

import struct

import numpy as np

from protocol.config import PROTOCOL_VERSION
from protocol.errors import MalformedMessage

MAGIC = b"SF"
HEADER_BYTES = 4
_U32 = struct.Struct(">I")


class Writer:
    """Accumulates one message's fields (encoder side)."""

    __slots__ = ("_parts",)

    def __init__(self, tag: int) -> None:
        self._parts: list[bytes] = [MAGIC, bytes([PROTOCOL_VERSION, tag])]

    def u8(self, value: int) -> Writer:
        self._parts.append(value.to_bytes(1, "big"))
        return self

    def u32(self, value: int) -> Writer:
        self._parts.append(value.to_bytes(4, "big"))
        return self

    def u64(self, value: int) -> Writer:
        self._parts.append(value.to_bytes(8, "big"))
        return self

    def blob(self, data: bytes) -> Writer:
        self._parts.append(len(data).to_bytes(4, "big"))
        self._parts.append(bytes(data))
        return self

    def ids(self, values: tuple[int, ...]) -> Writer:
        """A count, then 4-byte ids."""
        self.u32(len(values))
        self._parts.append(np.asarray(values, dtype=">u4").tobytes())
        return self

    def finish(self) -> bytes:
        return b"".join(self._parts)


def peek_tag(data: bytes) -> int:
    """The type byte of an encoded message, after checking magic and version."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessage("a message must be bytes")
    if len(data) < HEADER_BYTES or bytes(data[:2]) != MAGIC:
        raise MalformedMessage("not a secure_fed protocol message")
    if data[2] != PROTOCOL_VERSION:
        raise MalformedMessage(f"unsupported protocol version {data[2]}")
    return int(data[3])


class Reader:
    """Reads fields in order from one message (decoder side); every failure is Malformed."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes, tag: int) -> None:
        if peek_tag(data) != tag:
            raise MalformedMessage(f"expected message type {tag}, got {data[3]}")
        self._data = bytes(data)
        self._pos = HEADER_BYTES

    def _take(self, n: int) -> bytes:
        pos = self._pos
        if n < 0 or pos + n > len(self._data):
            raise MalformedMessage("message truncated")
        self._pos = pos + n
        return self._data[pos : pos + n]

    def u8(self) -> int:
        return self._take(1)[0]

    def u32(self) -> int:
        # struct, not int.from_bytes(self._take(4)): decoders read ~10^5 of these a round
        pos = self._pos
        if pos + 4 > len(self._data):
            raise MalformedMessage("message truncated")
        self._pos = pos + 4
        value: int = _U32.unpack_from(self._data, pos)[0]
        return value

    def u64(self) -> int:
        return int.from_bytes(self._take(8), "big")

    def blob(self, exact: int | None = None, max_len: int | None = None) -> bytes:
        n = self.u32()
        if exact is not None and n != exact:
            raise MalformedMessage(f"field must be {exact} bytes, got {n}")
        if max_len is not None and n > max_len:
            raise MalformedMessage(f"field longer than {max_len} bytes")
        pos = self._pos
        if pos + n > len(self._data):
            raise MalformedMessage("message truncated")
        self._pos = pos + n
        return self._data[pos : pos + n]

    def count(self, min_item_bytes: int) -> int:
        """A list length, refused if the remaining bytes cannot hold that many items."""
        n = self.u32()
        if n * max(min_item_bytes, 1) > len(self._data) - self._pos:
            raise MalformedMessage("list count exceeds the message size")
        return n

    def pairs(self, size: int) -> tuple[tuple[int, bytes], ...]:
        """A count, then that many (4-byte id, blob of exactly ``size`` bytes) records.

        Equals reading ``(u32(), blob(exact=size))`` count times, refusals included, but
        fixed-width records are checked in one numpy pass (a server reads ~10^5 of them
        per round); ids are not range-checked here (the message classes do that).
        """
        n = self.count(8 + size)
        rec = 8 + size
        pos = self._pos
        table = np.frombuffer(self._data, dtype=np.uint8, count=n * rec,
                              offset=pos).reshape(n, rec)
        lengths = table[:, 4:8].copy().view(">u4").reshape(n)
        if n and bool(np.any(lengths != size)):
            raise MalformedMessage(f"field must be {size} bytes, got "
                                   f"{int(lengths[np.argmax(lengths != size)])}")
        ids = table[:, :4].copy().view(">u4").reshape(n).tolist()
        data = self._data
        blobs = [data[p : p + size] for p in range(pos + 8, pos + n * rec, rec)]
        self._pos = pos + n * rec
        return tuple(zip(ids, blobs, strict=True))

    def ids(self) -> tuple[int, ...]:
        """A strictly increasing list of 4-byte ids."""
        n = self.count(4)
        arr = np.frombuffer(self._take(4 * n), dtype=">u4").astype(np.int64)
        if n > 1 and not bool(np.all(arr[1:] > arr[:-1])):
            raise MalformedMessage("id list must be strictly increasing")
        return tuple(arr.tolist())

    def end(self) -> None:
        if self._pos != len(self._data):
            raise MalformedMessage("trailing bytes after the message")
