"""The kernel's ascii_runtime_measurements format, read and written byte for byte.

security/integrity/ima/ima_fs.c ima_ascii_measurements_show() prints each entry
as `"%2d "` PCR, the template digest in lowercase hex, `" %s"` template name,
then for every field a space followed by the field (nothing if it is empty, so an
ima-sig entry without a signature ends in a space). ima_template_lib.c prints
digests as hex (d-ng prefixed with "<alg>:"), names as strings, sig and buf as hex.

Names are printed as the raw bytes the kernel holds, which need not be UTF-8
(ima_show_template_string uses "%s"). As text, cvtpm carries such bytes with
Python's surrogateescape (os.fsdecode does the same), so `encode_ascii` and
`parse_ascii` round-trip any name byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from cvtpm.errors import ParseError
from cvtpm.ima import template
from cvtpm.ima.entry import BANK_SIZES, PCR_COUNT, Entry
from cvtpm.ima.hashes import DIGEST_SIZES

_TEMPLATE_DIGEST_SIZES = frozenset(BANK_SIZES.values())


def parse_ascii(data: str | bytes) -> list[Entry]:
    """Parse a whole ascii list; ParseError names the line and its byte offset."""
    return list(iter_ascii(data))


def iter_ascii(data: str | bytes) -> Iterator[Entry]:
    """Yield the entries of an ascii list one line at a time."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")

    offset = 0
    index = 0
    size = len(data)
    while offset < size:
        end = data.find(b"\n", offset)
        if end < 0:
            end = size  # tolerate a last line without its newline
        line = data[offset:end].decode("utf-8", "surrogateescape")
        yield _parse_line(line, index, offset)
        offset = end + 1
        index += 1


def format_ascii(entry: Entry) -> str:
    """One entry as the kernel prints it, with the trailing newline, as text.

    A name that is not UTF-8 keeps its bytes as surrogate escapes; encode_ascii
    gives the line's bytes.
    """
    if entry.template_name == "ima":
        fields = [entry.file_digest.hex(), entry.path]
    else:
        fields = [f"{entry.digest_alg}:{entry.file_digest.hex()}", entry.path]
        if entry.template_name == "ima-sig":
            fields.append(entry.signature.hex())
        elif entry.template_name == "ima-buf":
            fields.append(entry.buffer.hex())
    digest_hex = entry.template_digest.hex()
    return f"{entry.pcr:2d} {digest_hex} {entry.template_name} {' '.join(fields)}\n"


def encode_ascii(entry: Entry) -> bytes:
    """One entry as the bytes the kernel prints: names exactly as stored, UTF-8 or not.

    Write these, not format_ascii's text, wherever the list leaves the process:
    a text stream would refuse (or mangle) a name that is not UTF-8.
    """
    return format_ascii(entry).encode("utf-8", "surrogateescape")


def dump_ascii(entries: Iterable[Entry]) -> str:
    """A whole ascii list, as text (see encode_ascii for its bytes)."""
    return "".join(format_ascii(entry) for entry in entries)


def _parse_line(line: str, index: int, offset: int) -> Entry:
    def fail(message: str) -> ParseError:
        return ParseError(f"line {index + 1}: {message}", offset=offset, entry=index)

    # 1. The fixed columns: "%2d " pads one-digit PCRs with a leading space.
    parts = (line[1:] if line.startswith(" ") else line).split(" ")
    if len(parts) < 4:
        raise fail("expected 'PCR template-hash template-name fields...'")
    pcr_text, digest_hex, template_name = parts[0], parts[1], parts[2]
    fields = parts[3:]

    if not pcr_text.isdigit() or not pcr_text.isascii() or int(pcr_text) >= PCR_COUNT:
        raise fail(f"bad PCR index {pcr_text!r}")
    template_digest = _unhex(digest_hex, "template hash", fail)
    if len(template_digest) not in _TEMPLATE_DIGEST_SIZES:
        raise fail(f"template hash of {len(template_digest)} bytes")

    # 2. The template's fields, one column each (names never hold spaces).
    layout = template.TEMPLATES.get(template_name)
    if layout is None:
        raise fail(f"unsupported template {template_name!r}")
    if len(fields) != len(layout):
        raise fail(f"{template_name} has {len(layout)} fields, found {len(fields)}")

    if template_name == "ima":
        digest_alg, file_digest = "sha1", _unhex(fields[0], "d field", fail)
    else:
        digest_alg, file_digest = _parse_d_ng(fields[0], fail)
    if len(file_digest) != DIGEST_SIZES[digest_alg]:
        raise fail(f"{digest_alg} file digest of {len(file_digest)} bytes")

    path = fields[1]
    extra = _unhex(fields[2], layout[2] + " field", fail) if len(layout) > 2 else b""
    signature = extra if template_name == "ima-sig" else b""
    buffer = extra if template_name == "ima-buf" else b""

    # 3. Rebuild the template data the digest was computed over.
    try:
        data = template.pack(
            template_name,
            digest_alg,
            file_digest,
            template.encode_name(path),
            signature,
            buffer,
        )
    except ValueError as exc:
        raise fail(str(exc)) from None

    return Entry(
        int(pcr_text),
        template_name,
        data,
        template_digest,
        digest_alg,
        file_digest,
        path,
        signature,
        buffer,
    )


def _parse_d_ng(text: str, fail) -> tuple[str, bytes]:
    alg, colon, digest_hex = text.partition(":")
    if not colon or alg not in DIGEST_SIZES:
        raise fail(f"d-ng field {text[:32]!r} is not '<alg>:<hex>'")
    return alg, _unhex(digest_hex, "d-ng field", fail)


def _unhex(text: str, what: str, fail) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise fail(f"{what} is not hex") from None
