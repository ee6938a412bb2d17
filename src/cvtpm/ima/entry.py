"""One IMA measurement list entry, and builders that make entries as the kernel does."""

from __future__ import annotations

from dataclasses import dataclass

from cvtpm.ima import template
from cvtpm.ima.hashes import DIGEST_SIZES, digest

# The PCR banks a list can be replayed into, with their digest sizes.
BANK_SIZES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}

DEFAULT_PCR = 10  # CONFIG_IMA_MEASURE_PCR_IDX
BOOT_AGGREGATE_NAME = "boot_aggregate"  # ima_init.c boot_aggregate_name
# TCG PC Client Platform TPM Profile: a TPM 2.0 has 24 PCRs per bank.
PCR_COUNT = 24


@dataclass(frozen=True, slots=True)
class Entry:
    """One measurement list entry, as the kernel logs it."""

    pcr: int
    template_name: str
    # Exactly the bytes hashed for the template digest (see cvtpm.ima.template).
    template_data: bytes
    # As logged: the SHA-1 template digest, or the bank's digest in per-bank lists.
    template_digest: bytes
    digest_alg: str
    file_digest: bytes
    path: str
    signature: bytes = b""
    buffer: bytes = b""

    @property
    def path_bytes(self) -> bytes:
        """The event name's bytes as the kernel stores them (UTF-8 or not)."""
        return template.encode_name(self.path)

    @property
    def is_violation(self) -> bool:
        """True for a ToMToU/open-writers violation: the kernel logs a zero digest."""
        return not self.template_digest.strip(b"\x00")

    def pcr_extend_digest(self, bank: str) -> bytes:
        """What the kernel extends into PCR bank `bank` for this entry.

        ima_queue.c ima_pcr_extend(): the sha1 bank gets the SHA-1 template digest,
        every other bank H_bank(template data) (kernel >= 5.8, ima_calc_field_array
        _hash per bank); violations extend all-0xFF (ima_api.c ima_add_violation).
        """
        size = BANK_SIZES.get(bank)
        if size is None:
            raise ValueError(f"unknown PCR bank {bank!r}")
        if self.is_violation:
            return b"\xff" * size
        if bank == "sha1" and len(self.template_digest) == size:
            return self.template_digest
        return digest(bank, self.template_data)

    def computed_template_digest(self, bank: str = "sha1") -> bytes:
        """H_bank(template data): the template digest this entry must carry."""
        if self.is_violation:
            return bytes(len(self.template_digest))
        return digest(bank, self.template_data)

    def template_digest_matches(self) -> bool:
        """True if the logged template digest agrees with the template data."""
        bank = _BANK_BY_SIZE.get(len(self.template_digest))
        if bank is None:
            return False
        return self.is_violation or self.template_digest == digest(
            bank, self.template_data
        )

    def for_bank(self, bank: str) -> Entry:
        """This entry as the bank's own list logs it (template digest of that bank)."""
        if self.is_violation:
            return _replace_digest(self, bytes(BANK_SIZES[bank]))
        return _replace_digest(self, digest(bank, self.template_data))


_BANK_BY_SIZE = {size: bank for bank, size in BANK_SIZES.items()}


def _replace_digest(entry: Entry, template_digest: bytes) -> Entry:
    return Entry(
        entry.pcr,
        entry.template_name,
        entry.template_data,
        template_digest,
        entry.digest_alg,
        entry.file_digest,
        entry.path,
        entry.signature,
        entry.buffer,
    )


def make_entry(
    template_name: str,
    path: str,
    file_digest: bytes,
    digest_alg: str = "sha256",
    *,
    signature: bytes = b"",
    buffer: bytes = b"",
    pcr: int = DEFAULT_PCR,
) -> Entry:
    """Build an entry of any supported template with its SHA-1 template digest.

    Spaces in `path` become underscores, as the kernel stores names.
    """
    _check_pcr(pcr)
    name = template.kernel_name(path)
    data = template.pack(
        template_name,
        digest_alg,
        file_digest,
        template.encode_name(name),
        signature,
        buffer,
    )
    return Entry(
        pcr,
        template_name,
        data,
        digest("sha1", data),
        digest_alg,
        file_digest,
        name,
        signature,
        buffer,
    )


def ima_ng(
    path: str, file_digest: bytes, digest_alg: str = "sha256", pcr: int = DEFAULT_PCR
) -> Entry:
    """An `ima-ng` entry (d-ng|n-ng) for a file and its digest."""
    return make_entry("ima-ng", path, file_digest, digest_alg, pcr=pcr)


def ima_sig(
    path: str,
    file_digest: bytes,
    digest_alg: str = "sha256",
    signature: bytes = b"",
    pcr: int = DEFAULT_PCR,
) -> Entry:
    """An `ima-sig` entry (d-ng|n-ng|sig); the signature is kept as opaque bytes."""
    return make_entry(
        "ima-sig", path, file_digest, digest_alg, signature=signature, pcr=pcr
    )


def ima_buf(
    name: str, buffer: bytes, digest_alg: str = "sha256", pcr: int = DEFAULT_PCR
) -> Entry:
    """An `ima-buf` entry (d-ng|n-ng|buf): a named buffer and its digest."""
    return make_entry(
        "ima-buf", name, digest(digest_alg, buffer), digest_alg, buffer=buffer, pcr=pcr
    )


def ima_legacy(path: str, file_digest: bytes, pcr: int = DEFAULT_PCR) -> Entry:
    """An entry of the legacy `ima` template (d|n): SHA-1 digest, name <= 255 bytes."""
    return make_entry("ima", path, file_digest, "sha1", pcr=pcr)


# The name of the violation entry cvtpm logs when a container went on running
# while no agent measured it (the daemon was stopped, not crashed): whatever
# ran then is missing from the list, and a verifier must be told.
MEASUREMENT_GAP = "cvtpm:measurement-gap"


def violation(
    path: str,
    template_name: str = "ima-ng",
    digest_alg: str = "sha256",
    pcr: int = DEFAULT_PCR,
) -> Entry:
    """A violation entry: zero file digest and zero template digest.

    ima_api.c ima_add_violation() logs the file with no digest;
    ima_template_lib.c ima_eventdigest_init_common() leaves room for a zero digest
    of the configured algorithm.
    """
    if template_name == "ima":
        digest_alg = "sha1"
    if template_name not in ("ima", "ima-ng", "ima-sig"):
        raise ValueError(f"violations are not logged with template {template_name!r}")
    size = DIGEST_SIZES[digest_alg]
    entry = make_entry(template_name, path, bytes(size), digest_alg, pcr=pcr)
    return _replace_digest(entry, bytes(BANK_SIZES["sha1"]))


def boot_aggregate(
    pcrs: dict[str, dict[int, bytes]] | None,
    template_name: str = "ima-ng",
    digest_alg: str = "sha256",
    pcr: int = DEFAULT_PCR,
) -> Entry:
    """The list's first entry, `boot_aggregate`, as the kernel computes it.

    `pcrs` maps a bank to {PCR index: value} read from the host TPM, or is None
    when there is no TPM (then the digest is all zeros, ima_init.c
    ima_add_boot_aggregate). ima_crypto.c ima_calc_boot_aggregate() picks the
    bank of the configured algorithm if allocated, else sha256, else sha1, and
    hashes PCRs 0-7, plus 8-9 for every bank but sha1, with that bank's hash.
    """
    if template_name == "ima":
        # The `d` field holds SHA-1 only; ima_init.c asks for the sha1 bank.
        digest_alg = "sha1"
    if template_name not in template.TEMPLATES or template_name == "ima-buf":
        raise ValueError(f"boot_aggregate is not logged with {template_name!r}")

    if pcrs is None:
        value = bytes(DIGEST_SIZES[digest_alg])
    else:
        digest_alg = _aggregate_bank(pcrs, digest_alg)
        if template_name == "ima" and digest_alg != "sha1":
            raise ValueError("template 'ima' needs the sha1 PCR bank")
        value = _aggregate(pcrs[digest_alg], digest_alg)

    return make_entry(template_name, BOOT_AGGREGATE_NAME, value, digest_alg, pcr=pcr)


def _aggregate_bank(pcrs: dict[str, dict[int, bytes]], wanted: str) -> str:
    for bank in (wanted, "sha256", "sha1"):
        if bank in pcrs:
            return bank
    raise ValueError("boot_aggregate needs the sha256 or sha1 PCR bank")


def _aggregate(values: dict[int, bytes], bank: str) -> bytes:
    indices = range(8) if bank == "sha1" else range(10)
    size = BANK_SIZES[bank]
    parts = []
    for index in indices:
        value = values.get(index)
        if value is None or len(value) != size:
            raise ValueError(f"boot_aggregate needs {bank} PCR {index} ({size} bytes)")
        parts.append(value)
    return digest(bank, b"".join(parts))


def _check_pcr(pcr: int) -> None:
    if not 0 <= pcr < PCR_COUNT:
        raise ValueError(f"PCR index {pcr} out of range 0-{PCR_COUNT - 1}")
