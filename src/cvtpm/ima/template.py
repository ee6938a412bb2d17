"""Template data of the kernel's IMA templates: the bytes behind each template digest.

The layouts follow security/integrity/ima/ima_template.c (the template descriptors)
and ima_template_lib.c (one init/show pair per field): every field of a template
other than the legacy `ima` is hashed as a little-endian u32 length followed by
its data (ima_crypto.c, ima_calc_field_array_hash_tfm).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from cvtpm.ima._cursor import Cursor
from cvtpm.ima.hashes import DIGEST_SIZES

# ima_template.c builtin_templates[] (the ones cvtpm reads and writes).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "ima": ("d", "n"),
    "ima-ng": ("d-ng", "n-ng"),
    "ima-sig": ("d-ng", "n-ng", "sig"),
    "ima-buf": ("d-ng", "n-ng", "buf"),
}

# security/integrity/ima/ima.h IMA_EVENT_NAME_LEN_MAX: the legacy `ima` template
# hashes its name zero-padded to this length plus one byte.
IMA_EVENT_NAME_LEN_MAX = 255
LEGACY_DIGEST_SIZE = 20  # the `d` field is always a SHA-1 (TPM 1.2 sized) digest

_U32LE = struct.Struct("<I")


class Fields(NamedTuple):
    """The decoded fields of one template's data."""

    digest_alg: str
    file_digest: bytes
    path: str
    signature: bytes = b""
    buffer: bytes = b""


def encode_name(name: str) -> bytes:
    """The bytes of an event name; names that are not UTF-8 survive a round trip."""
    return name.encode("utf-8", "surrogateescape")


def decode_name(raw: bytes) -> str:
    """The inverse of encode_name: never fails, whatever the bytes."""
    return raw.decode("utf-8", "surrogateescape")


def kernel_name(name: str) -> str:
    """The event name as the kernel stores it: spaces become underscores.

    ima_template_lib.c ima_write_template_field_data() does this to every
    DATA_FMT_STRING field so that the ascii list stays space-separated.
    """
    return name.replace(" ", "_")


def d_ng(digest_alg: str, file_digest: bytes) -> bytes:
    """The d-ng field: "<alg>:" NUL digest (ima_eventdigest_init_common)."""
    return digest_alg.encode("ascii") + b":\x00" + file_digest


def pack(
    template_name: str,
    digest_alg: str,
    file_digest: bytes,
    name: bytes,
    signature: bytes = b"",
    buffer: bytes = b"",
) -> bytes:
    """The template data of one entry, exactly as the kernel hashes it.

    `name` is the event name without its terminating NUL; checks that the
    pieces fit the template and raises ValueError (a programming error) if not.
    """
    if template_name == "ima":
        if digest_alg != "sha1" or len(file_digest) != LEGACY_DIGEST_SIZE:
            raise ValueError("template 'ima' holds a 20-byte sha1 file digest")
        if len(name) > IMA_EVENT_NAME_LEN_MAX or b"\x00" in name:
            raise ValueError("template 'ima' names are at most 255 bytes, no NUL")
        # ima_calc_field_array_hash_tfm: no length prefixes; the name is hashed
        # in a zeroed buffer of IMA_EVENT_NAME_LEN_MAX + 1 bytes.
        return file_digest + name.ljust(IMA_EVENT_NAME_LEN_MAX + 1, b"\x00")

    fields = TEMPLATES.get(template_name)
    if fields is None:
        raise ValueError(f"unsupported template {template_name!r}")
    if DIGEST_SIZES.get(digest_alg) != len(file_digest):
        raise ValueError(
            f"{digest_alg} digest must be {DIGEST_SIZES.get(digest_alg)} bytes"
        )
    if b"\x00" in name:
        raise ValueError("event names cannot contain NUL")
    if signature and "sig" not in fields:
        raise ValueError(f"template {template_name!r} has no signature field")
    if buffer and "buf" not in fields:
        raise ValueError(f"template {template_name!r} has no buffer field")

    values = {"d-ng": d_ng(digest_alg, file_digest), "n-ng": name + b"\x00"}
    values["sig"] = signature
    values["buf"] = buffer
    return b"".join(_U32LE.pack(len(values[f])) + values[f] for f in fields)


def unpack(
    template_name: str, data: bytes, *, base: int = 0, entry: int | None = None
) -> Fields:
    """Decode template data; ParseError (offsets from `base`) if it is malformed."""
    cursor = Cursor(data, base=base, entry=entry)
    if template_name == "ima":
        return _unpack_legacy(cursor)

    fields = TEMPLATES.get(template_name)
    if fields is None:
        raise cursor.fail(f"unsupported template {template_name!r}")

    digest_alg, file_digest = _parse_d_ng(cursor, cursor.sized("d-ng field"))
    name_at = cursor.pos
    path = _parse_n_ng(cursor, cursor.sized("n-ng field"), name_at)
    signature = cursor.sized("sig field") if "sig" in fields else b""
    buffer = cursor.sized("buf field") if "buf" in fields else b""
    cursor.expect_end(f"{template_name} template data")
    return Fields(digest_alg, file_digest, path, signature, buffer)


def unpack_fast(template_name: str, data: bytes) -> Fields | None:
    """Decode well-formed d-ng|n-ng[|sig|buf] data in one pass, or return None.

    Lists are long and almost always well formed; this path does the checks of
    unpack() without a cursor, and leaves error reporting to unpack().
    """
    layout = TEMPLATES.get(template_name)
    if layout is None or template_name == "ima":
        return None

    # 1. Split the length-prefixed fields; every length is checked first.
    size = len(data)
    pos = 0
    values = []
    for _ in layout:
        if pos + 4 > size:
            return None
        end = pos + 4 + _U32LE.unpack_from(data, pos)[0]
        if end > size:
            return None
        values.append(data[pos + 4 : end])
        pos = end
    if pos != size:
        return None

    # 2. d-ng: "<alg>:" NUL digest of the algorithm's size.
    d_field = values[0]
    colon = d_field.find(b":")
    if colon <= 0 or d_field[colon + 1 : colon + 2] != b"\x00":
        return None
    alg = d_field[:colon].decode("ascii", "replace")
    file_digest = d_field[colon + 2 :]
    if DIGEST_SIZES.get(alg) != len(file_digest):
        return None

    # 3. n-ng: one NUL, at the end.
    name = values[1]
    if not name or name.find(b"\x00") != len(name) - 1:
        return None
    path = name[:-1].decode("utf-8", "surrogateescape")

    if template_name == "ima-sig":
        return Fields(alg, file_digest, path, values[2])
    if template_name == "ima-buf":
        return Fields(alg, file_digest, path, b"", values[2])
    return Fields(alg, file_digest, path)


def _unpack_legacy(cursor: Cursor) -> Fields:
    file_digest = cursor.take(LEGACY_DIGEST_SIZE, "d field")
    padded = cursor.take(IMA_EVENT_NAME_LEN_MAX + 1, "n field")
    cursor.expect_end("ima template data")
    name, _, padding = padded.partition(b"\x00")
    if padding.strip(b"\x00"):
        raise cursor.fail("n field: bytes after the name's NUL", at=LEGACY_DIGEST_SIZE)
    return Fields("sha1", file_digest, decode_name(name))


def _parse_d_ng(cursor: Cursor, field: bytes) -> tuple[str, bytes]:
    at = cursor.pos - len(field)
    colon = field.find(b":")
    if colon <= 0 or field[colon + 1 : colon + 2] != b"\x00":
        raise cursor.fail("d-ng field: expected '<alg>:' NUL <digest>", at=at)

    alg = field[:colon].decode("ascii", "replace")
    size = DIGEST_SIZES.get(alg)
    if size is None:
        raise cursor.fail(f"d-ng field: unknown hash algorithm {alg!r}", at=at)

    file_digest = field[colon + 2 :]
    if len(file_digest) != size:
        raise cursor.fail(
            f"d-ng field: {alg} digest is {len(file_digest)} bytes, expected {size}",
            at=at,
        )
    return alg, file_digest


def _parse_n_ng(cursor: Cursor, field: bytes, at: int) -> str:
    # ima_write_template_field_data() always stores the terminating NUL.
    if not field.endswith(b"\x00"):
        raise cursor.fail("n-ng field: name is not NUL-terminated", at=at)
    name = field[:-1]
    if b"\x00" in name:
        raise cursor.fail("n-ng field: NUL inside the name", at=at)
    return decode_name(name)


def parse_legacy_name(cursor: Cursor) -> bytes:
    """Read the legacy `n` field as binary lists show it: u32 strlen, name, no NUL."""
    name = cursor.sized("n field")
    if len(name) > IMA_EVENT_NAME_LEN_MAX:
        raise cursor.fail(f"n field: name of {len(name)} bytes exceeds 255")
    if b"\x00" in name:
        raise cursor.fail("n field: NUL inside the name")
    return name
