"""A read cursor over marshaled TPM structures: big-endian, length checked."""

from __future__ import annotations

from cvtpm.errors import ParseError


class Cursor:
    """Reads big-endian integers and sized buffers (TPM 2.0 Part 2, clause 5)."""

    def __init__(self, data: bytes, what: str):
        self.data = bytes(data)
        self.offset = 0
        self.what = what

    def fail(self, message: str, offset: int | None = None) -> ParseError:
        """A ParseError about this structure at `offset` (default: the cursor)."""
        where = self.offset if offset is None else offset
        return ParseError(f"{self.what}: {message}", offset=where)

    def take(self, size: int, field: str) -> bytes:
        """The next `size` bytes, or a ParseError naming `field` if fewer are left."""
        left = len(self.data) - self.offset
        if size > left:
            raise self.fail(f"{field} needs {size} bytes, {left} left")
        start = self.offset
        self.offset += size
        return self.data[start : self.offset]

    def u8(self, field: str) -> int:
        """One unsigned byte."""
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        """A big-endian UINT16."""
        return int.from_bytes(self.take(2, field), "big")

    def u32(self, field: str) -> int:
        """A big-endian UINT32."""
        return int.from_bytes(self.take(4, field), "big")

    def u64(self, field: str) -> int:
        """A big-endian UINT64."""
        return int.from_bytes(self.take(8, field), "big")

    def tpm2b(self, field: str, max_size: int | None = None) -> bytes:
        """A TPM2B: a UINT16 size, then that many bytes (Part 2, 10.4)."""
        at = self.offset
        size = self.u16(f"{field}.size")
        if max_size is not None and size > max_size:
            raise self.fail(f"{field}.size {size} exceeds {max_size}", at)
        return self.take(size, field)

    def done(self) -> None:
        """Raise unless every byte was consumed: trailing bytes mean malformed input."""
        if self.offset != len(self.data):
            extra = len(self.data) - self.offset
            raise self.fail(f"{extra} bytes left over")


def marshal_u16(value: int) -> bytes:
    """A big-endian UINT16."""
    return value.to_bytes(2, "big")


def marshal_u32(value: int) -> bytes:
    """A big-endian UINT32."""
    return value.to_bytes(4, "big")


def marshal_tpm2b(data: bytes) -> bytes:
    """A TPM2B: UINT16 size followed by the bytes."""
    if len(data) > 0xFFFF:
        raise ValueError("a TPM2B holds at most 65535 bytes")
    return marshal_u16(len(data)) + data
