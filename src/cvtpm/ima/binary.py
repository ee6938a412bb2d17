"""The kernel's binary_runtime_measurements format, read and written byte for byte.

security/integrity/ima/ima_fs.c ima_measurements_show() writes, per entry and in
little-endian (the canonical format, ima_canonical_fmt):

    u32 pcr | template digest | u32 name length | name | u32 data length | data

The template digest is 20 bytes (SHA-1) in the classic list and the bank's size
in the per-bank lists (binary_runtime_measurements_<alg>). The legacy `ima`
template has no data length: its `d` field is written bare (20 bytes) and its
`n` field as u32 strlen + name without NUL (IMA_SHOW_BINARY_NO_FIELD_LEN and
IMA_SHOW_BINARY_OLD_STRING_FMT in ima_template_lib.c).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from cvtpm.ima import template
from cvtpm.ima._cursor import Cursor
from cvtpm.ima.entry import BANK_SIZES, PCR_COUNT, Entry

_U32LE = struct.Struct("<I")


def parse_binary(data: bytes, digest_size: int = 20) -> list[Entry]:
    """Parse a whole binary list whose template digests are `digest_size` bytes."""
    return list(iter_binary(data, digest_size))


def iter_binary(data: bytes, digest_size: int = 20) -> Iterator[Entry]:
    """Yield the entries of a binary list; ParseError gives entry index and offset."""
    if digest_size not in BANK_SIZES.values():
        raise ValueError(f"no PCR bank has {digest_size}-byte digests")

    cursor = Cursor(bytes(data))
    index = 0
    while cursor.remaining:
        cursor.entry = index
        entry = _read_entry_fast(cursor, digest_size)
        yield entry if entry is not None else _read_entry(cursor, digest_size, index)
        index += 1


_TEMPLATE_NAMES = {name.encode(): name for name in template.TEMPLATES if name != "ima"}


def _read_entry_fast(cursor: Cursor, digest_size: int) -> Entry | None:
    """Read a well-formed non-legacy entry in one pass, or None (then _read_entry
    reads it again, field by field, and says exactly what is wrong)."""
    data = cursor.data
    pos = cursor.pos
    head_end = pos + 4 + digest_size + 4
    if head_end > len(data):
        return None
    pcr = _U32LE.unpack_from(data, pos)[0]
    name_end = head_end + _U32LE.unpack_from(data, head_end - 4)[0]
    if pcr >= PCR_COUNT or name_end + 4 > len(data):
        return None
    template_name = _TEMPLATE_NAMES.get(data[head_end:name_end])
    if template_name is None:
        return None
    data_end = name_end + 4 + _U32LE.unpack_from(data, name_end)[0]
    if data_end > len(data):
        return None
    template_data = data[name_end + 4 : data_end]
    fields = template.unpack_fast(template_name, template_data)
    if fields is None:
        return None

    cursor.pos = data_end
    return Entry(
        pcr,
        template_name,
        template_data,
        data[pos + 4 : pos + 4 + digest_size],
        *fields,
    )


def _read_entry(cursor: Cursor, digest_size: int, index: int) -> Entry:
    # 1. The header: PCR, template digest, template name.
    start = cursor.pos
    pcr = cursor.u32le("PCR index")
    if pcr >= PCR_COUNT:
        raise cursor.fail(f"PCR index {pcr} out of range", at=start)
    template_digest = cursor.take(digest_size, "template digest")
    name_at = cursor.pos
    raw_name = cursor.sized("template name")
    template_name = raw_name.decode("ascii", "replace")
    if template_name not in template.TEMPLATES:
        raise cursor.fail(f"unsupported template {template_name[:32]!r}", at=name_at)

    # 2. The template data (rebuilt for the legacy template, which has no length).
    if template_name == "ima":
        file_digest = cursor.take(template.LEGACY_DIGEST_SIZE, "d field")
        name = template.parse_legacy_name(cursor)
        data = template.pack("ima", "sha1", file_digest, name)
        fields = template.Fields("sha1", file_digest, template.decode_name(name))
    else:
        size = cursor.u32le("template data length")
        at = cursor.pos
        data = cursor.take(size, "template data")
        fields = template.unpack(template_name, data, base=at, entry=index)

    return Entry(
        pcr,
        template_name,
        data,
        template_digest,
        fields.digest_alg,
        fields.file_digest,
        fields.path,
        fields.signature,
        fields.buffer,
    )


def encode_binary(entry: Entry) -> bytes:
    """One entry in the binary format (little-endian)."""
    name = entry.template_name.encode("ascii")
    head = _U32LE.pack(entry.pcr) + entry.template_digest + _U32LE.pack(len(name))
    if entry.template_name == "ima":
        path = template.encode_name(entry.path)
        body = entry.file_digest + _U32LE.pack(len(path)) + path
    else:
        body = _U32LE.pack(len(entry.template_data)) + entry.template_data
    return head + name + body


def dump_binary(entries: Iterable[Entry]) -> bytes:
    """A whole binary list."""
    return b"".join(encode_binary(entry) for entry in entries)
