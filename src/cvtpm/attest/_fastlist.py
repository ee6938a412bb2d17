"""The verifier's hot loop over a binary list: split, replay, check, without objects.

Verifying a list is dominated by per-entry Python overhead, so the common case
(templates ima-ng, ima-sig and ima-buf, whose binary template data is exactly
what the kernel hashes) is handled on raw slices here. Anything else, and any
entry the policy does not allow at a glance, goes through cvtpm.ima's parser
and the runtime policy's own evaluator, so every verdict and error message is
theirs. The extend rules are those of cvtpm.ima.entry.Entry.pcr_extend_digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
import weakref
from collections.abc import Callable
from typing import Any

from cvtpm.ima.binary import parse_binary
from cvtpm.ima.entry import BANK_SIZES

# Templates whose binary template data is hashed as it stands (ima_fs.c writes
# the legacy "ima" template differently, so it takes the careful path).
_FAST_TEMPLATES = frozenset({b"ima-ng", b"ima-sig", b"ima-buf"})
_U32 = struct.Struct("<I")
_HASHES: dict[str, Callable[..., Any]] = {
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
}

# (PCR, template name, template digest, template data) of one entry.
Raw = tuple[int, bytes, bytes, bytes]


def split(data: bytes, digest_size: int) -> list[Raw] | None:
    """The entries of a binary list as raw slices, or None unless all are simple.

    None means "use cvtpm.ima.binary": a legacy template, an unknown one, a PCR
    out of range or a truncated entry, all of which it reports precisely.
    """
    head = struct.Struct(f"<I{digest_size}sI")
    unpack_head, unpack_u32, head_size = head.unpack_from, _U32.unpack_from, head.size
    fast = _FAST_TEMPLATES
    out: list[Raw] = []
    append = out.append
    pos, end = 0, len(data)
    try:
        while pos < end:
            pcr, digest, name_len = unpack_head(data, pos)
            name_end = pos + head_size + name_len
            # A name cut short by the end of the data is no fast template.
            name = data[pos + head_size : name_end]
            if pcr >= 24 or name not in fast:
                return None
            data_end = name_end + 4 + unpack_u32(data, name_end)[0]
            if data_end > end:
                return None
            append((pcr, name, digest, data[name_end + 4 : data_end]))
            pos = data_end
    except struct.error:  # a header or length field cut short
        return None
    return out


def split_ascii(text: str) -> list[Raw]:
    """The entries of an ascii list as raw slices (template data rebuilt as hashed).

    Plain ima-ng lines (five fields) are rebuilt here; every other line is read
    by cvtpm.ima.ascii, which also raises its ParseError for malformed ones.
    """
    from cvtpm.ima.ascii import parse_ascii

    out: list[Raw] = []
    append = out.append
    pack = _U32.pack
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) == 5 and fields[2] == "ima-ng" and ":" in fields[3]:
            alg, _, hex_digest = fields[3].partition(":")
            try:
                d_field = alg.encode() + b":\0" + bytes.fromhex(hex_digest)
                digest = bytes.fromhex(fields[1])
                pcr = int(fields[0])
            except ValueError:
                pass
            else:
                n_field = fields[4].encode("utf-8", "surrogateescape") + b"\0"
                data = pack(len(d_field)) + d_field + pack(len(n_field)) + n_field
                append((pcr, b"ima-ng", digest, data))
                continue
        if line.strip():
            e = parse_ascii(line + "\n")[0]
            append(
                (e.pcr, e.template_name.encode(), e.template_digest, e.template_data)
            )
    return out


def replay(
    raws: list[Raw], start: dict[str, bytes], quoted: dict[str, bytes]
) -> tuple[int | None, dict[str, bytes]]:
    """Extend from `start` until every bank equals `quoted`: (entries used, values).

    Per entry and bank, as Entry.pcr_extend_digest: sha1 gets the logged SHA-1
    template digest, other banks H_bank(template data), violations 0xFF.
    """
    values = {bank: start.get(bank, bytes(BANK_SIZES[bank])) for bank in quoted}
    if values == quoted:
        return 0, values
    if list(quoted) == ["sha1"]:  # the common single-bank case, unrolled
        return _replay_sha1(raws, values["sha1"], quoted["sha1"])
    banks = _banks(quoted)
    for count, (_, _, digest, data) in enumerate(raws, start=1):
        _extend(values, banks, digest, data)
        if values == quoted:
            return count, values
    return None, values


def extend_all(raws: list[Raw], banks: list[str]) -> dict[str, bytes]:
    """PCR 10 of each bank after every entry of `raws`, extended from zeros."""
    values = {bank: bytes(BANK_SIZES[bank]) for bank in banks}
    chosen = _banks(values)
    for _, _, digest, data in raws:
        _extend(values, chosen, digest, data)
    return values


def _banks(banks) -> list[tuple[str, Callable[..., Any], bytes]]:
    """(bank, its hash, its violation digest) for each bank."""
    return [(bank, _HASHES[bank], b"\xff" * BANK_SIZES[bank]) for bank in banks]


def _extend(values: dict[str, bytes], banks, digest: bytes, data: bytes) -> None:
    """Extend one entry into every bank of `values`."""
    violation = not any(digest)
    for bank, hash_, ones in banks:
        if violation:
            extend = ones
        elif bank == "sha1" and len(digest) == 20:
            extend = digest
        else:
            extend = hash_(data).digest()
        values[bank] = hash_(values[bank] + extend).digest()


def _replay_sha1(
    raws: list[Raw], value: bytes, target: bytes
) -> tuple[int | None, dict[str, bytes]]:
    sha1 = hashlib.sha1
    ones = b"\xff" * 20
    zeros = _zeros(raws)
    for count, (_, _, digest, data) in enumerate(raws, start=1):
        if digest == zeros:
            extend = ones
        elif len(digest) == 20:
            extend = digest
        else:
            extend = sha1(data).digest()
        value = sha1(value + extend).digest()
        if value == target:
            return count, {"sha1": value}
    return None, {"sha1": value}


def bad_templates(
    raws: list[Raw], known: dict[bytes, bytes] | None = None
) -> list[int]:
    """Positions of entries whose SHA-1 template digest is not that of their data.

    `known` maps template data to its SHA-1 digest, computed beforehand (see
    allowed_templates): an entry found there is checked by one comparison
    instead of a hash, which halves the hashing of a list the policy allows.
    """
    sha1 = hashlib.sha1
    get = (known or {}).get
    zeros = _zeros(raws)
    bad = []
    for i, (_, _, digest, data) in enumerate(raws):
        expected = get(data)
        if expected is None:
            if digest != zeros and sha1(data).digest() != digest:
                bad.append(i)
        elif expected != digest and digest != zeros:
            bad.append(i)
    return bad


_ALLOWED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def allowed_templates(policy: Any) -> dict[bytes, bytes] | None:
    """The template data of every ima-ng entry a runtime policy allows outright.

    Each maps to its SHA-1 template digest, worked out once per policy, so
    that bad_templates need not hash the entries the policy allows.

    A policy evaluator exposing its RuntimePolicy as `.policy` allows an
    unsigned, non-violation ima-ng entry whose digest is listed for its path
    (the rule in cvtpm.attest.policy.evaluate). Such an entry's template data
    is exactly d-ng "<alg>:\\0<digest>" then n-ng "<path>\\0", each behind its
    length (ima_template_lib.c: ima_eventdigest_ng_init, ima_eventname_ng_init),
    so one set lookup of the raw bytes stands for parsing both fields.
    Other policies get no shortcut (None).
    """
    model = getattr(policy, "policy", None)
    digests = getattr(model, "digests", None)
    if digests is None:
        return None
    with contextlib.suppress(KeyError, TypeError):  # TypeError: not weakly referable
        return _ALLOWED[policy]
    pack = _U32.pack
    allowed = {}
    for path, values in digests.items():
        name = path.encode("utf-8", "surrogateescape") + b"\0"
        n_field = pack(len(name)) + name
        for digest in values:
            d_field = digest.alg.encode() + b":\0" + digest.value
            data = pack(len(d_field)) + d_field + n_field
            allowed[data] = hashlib.sha1(data).digest()
    with contextlib.suppress(TypeError):
        _ALLOWED[policy] = allowed
    return allowed


def needing_policy(raws: list[Raw], allowed: dict[bytes, bytes]) -> list[int]:
    """Positions of entries the policy must judge: all but plainly allowed ima-ng ones.

    `allowed` is allowed_templates(policy); a violation (all-zero template
    digest) is never plainly allowed, whatever its data.
    """
    zeros = _zeros(raws)
    return [
        i
        for i, (_, name, digest, data) in enumerate(raws)
        if data not in allowed or name != b"ima-ng" or digest == zeros
    ]


def _zeros(raws: list[Raw]) -> bytes:
    """The all-zero template digest of a violation, at the size of this list's.

    One list has one digest size (split reads them all with one), and
    comparing with it is cheaper per entry than `not any(digest)`.
    """
    return bytes(len(raws[0][2])) if raws else b""


def entry(raw: Raw, digest_size: int) -> Any:
    """The cvtpm.ima Entry of one raw entry (for the policy's own evaluator)."""
    pcr, name, digest, data = raw
    encoded = (
        _U32.pack(pcr)
        + digest
        + _U32.pack(len(name))
        + name
        + _U32.pack(len(data))
        + data
    )
    return parse_binary(encoded, digest_size)[0]
