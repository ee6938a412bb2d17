"""A bounds-checked reader over bytes that names what it failed to read, and where."""

from __future__ import annotations

import struct

from cvtpm.errors import ParseError

_U32LE = struct.Struct("<I")


class Cursor:
    """Reads fields front to back; every read checks the length before slicing."""

    __slots__ = ("data", "pos", "base", "entry")

    def __init__(self, data: bytes, *, base: int = 0, entry: int | None = None):
        self.data = data
        self.pos = 0
        # Offsets in errors are relative to the whole list, not to this slice.
        self.base = base
        self.entry = entry

    @property
    def offset(self) -> int:
        """Absolute offset of the next byte to read."""
        return self.base + self.pos

    @property
    def remaining(self) -> int:
        """Number of bytes not read yet."""
        return len(self.data) - self.pos

    def fail(self, message: str, *, at: int | None = None) -> ParseError:
        """A ParseError for this entry at `at` (default: the current offset)."""
        offset = self.offset if at is None else self.base + at
        return ParseError(message, offset=offset, entry=self.entry)

    def take(self, size: int, what: str) -> bytes:
        """Return the next `size` bytes, or raise naming `what` if they are missing."""
        end = self.pos + size
        if size < 0 or end > len(self.data):
            raise self.fail(f"{what}: need {size} bytes, {self.remaining} left")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u32le(self, what: str) -> int:
        """Read a little-endian u32 (the kernel's canonical list format)."""
        if self.pos + 4 > len(self.data):
            raise self.fail(f"{what}: need 4 bytes, {self.remaining} left")
        (value,) = _U32LE.unpack_from(self.data, self.pos)
        self.pos += 4
        return value

    def sized(self, what: str) -> bytes:
        """Read a u32le length followed by that many bytes."""
        size = self.u32le(f"{what} length")
        return self.take(size, what)

    def expect_end(self, what: str) -> None:
        """Raise if any byte is left over."""
        if self.pos != len(self.data):
            raise self.fail(f"{what}: {self.remaining} bytes left over")
