"""The verifier's hot loop over a binary list: split, replay, check, without objects.

Verifying a list is dominated by per-entry overhead, so the common case
(templates ima-ng, ima-sig and ima-buf, whose binary template data is exactly
what the kernel hashes; ima_fs.c writes the legacy "ima" template differently)
is handled on raw slices here, its loops in C (_rawlist.c), where a step
costs a fraction of what a Python statement does. Anything else, and any
entry the policy does not allow at a glance, goes through cvtpm.ima's parser
and the runtime policy's own evaluator, so every verdict and error message is
theirs. The extend rules are those of cvtpm.ima.entry.Entry.pcr_extend_digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
import weakref
from typing import Any

from cvtpm.attest import _rawlist
from cvtpm.ima.binary import parse_binary
from cvtpm.ima.entry import BANK_SIZES
from cvtpm.ima.hashes import DIGEST_SIZES

_U32 = struct.Struct("<I")

# (PCR, template name, template digest, template data) of one entry.
Raw = tuple[int, bytes, bytes, bytes]


def split(data: bytes, digest_size: int) -> list[Raw] | None:
    """The entries of a binary list as raw slices, or None unless all are simple.

    None means "use cvtpm.ima.binary": a legacy template, an unknown one, a PCR
    out of range or a truncated entry, all of which it reports precisely.
    """
    return _rawlist.split(data, digest_size)


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
    if not quoted:
        return 0, {}
    banks = list(quoted)
    values = [start.get(bank, bytes(BANK_SIZES[bank])) for bank in banks]
    count, values = _rawlist.replay(raws, banks, values, list(quoted.values()))
    return count, dict(zip(banks, values, strict=True))


def extend_all(raws: list[Raw], banks: list[str]) -> dict[str, bytes]:
    """PCR 10 of each bank after every entry of `raws`, extended from zeros."""
    if not banks:
        return {}
    zeros = [bytes(BANK_SIZES[bank]) for bank in banks]
    _, values = _rawlist.replay(raws, list(banks), zeros, None)
    return dict(zip(banks, values, strict=True))


def bad_templates(
    raws: list[Raw], known: dict[bytes, bytes] | None = None
) -> list[int]:
    """Positions of entries whose template digest is not that of their data.

    As Entry.template_digest_matches: the data is hashed with the bank hash
    of the digest's size, and a violation's all-zero digest is never bad.
    `known` maps template data to its SHA-1 digest, computed beforehand (see
    allowed_templates): a 20-byte digest found there is checked by one
    comparison instead of a hash, which halves the hashing of a list the
    policy allows.
    """
    return _rawlist.bad_templates(raws, known)


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
        if "\0" in path:
            continue  # no n-ng name holds a NUL: such entries must be decoded
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
    return _rawlist.needing_policy(raws, allowed)


def malformed(raws: list[Raw]) -> list[int]:
    """Positions of entries whose template data might not decode.

    The others are d-ng|n-ng[|sig|buf] exactly as cvtpm.ima.template decodes
    them (unpack_fast's rules, in C); these need cvtpm.ima's parser, which
    decodes them or says what is wrong.
    """
    return _rawlist.malformed(raws, DIGEST_SIZES)


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
