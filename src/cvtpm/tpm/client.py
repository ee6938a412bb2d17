"""A connection to one TPM through tpm2-pytss, with the few commands cvtpm needs."""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterable
from dataclasses import dataclass

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_RC,
    TPM2_SE,
    TPM2_SU,
    TPMA_NV,
)
from tpm2_pytss.types import (
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_NV_PUBLIC,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMS_NV_PUBLIC,
    TPMS_PCR_SELECTION,
    TPMT_HA,
    TPMT_SYM_DEF,
)

from cvtpm.errors import TpmError

BANK_ALGS = {
    "sha1": TPM2_ALG.SHA1,
    "sha256": TPM2_ALG.SHA256,
    "sha384": TPM2_ALG.SHA384,
    "sha512": TPM2_ALG.SHA512,
}
ALG_BANKS = {int(alg): bank for bank, alg in BANK_ALGS.items()}

# The TCTI libraries held loaded, by TCTI name (see _hold_tcti_library).
_TCTI_LIBRARIES: dict[str, ctypes.CDLL | None] = {}

# TPM 2.0 Part 2, section 6.13 (TPM_PT): the fixed properties an EK
# certificate's subject alternative name is built from.
TPM_PT_MANUFACTURER = 0x105
TPM_PT_VENDOR_STRING_1 = 0x106
TPM_PT_FIRMWARE_VERSION_1 = 0x10B

# Largest chunk TPM2_NV_Write and TPM2_NV_Read move at once on libtpms
# (MAX_NV_BUFFER_SIZE); larger certificates are written in pieces.
_NV_CHUNK = 1024

# TCG EK Credential Profile v2.5, section 2.2.1.5: the attributes of the EK
# certificate's NV index. PPWRITE + WRITEDEFINE and a write lock after the
# write make it read-only until the index is undefined by the platform.
_EK_CERT_NV_ATTRIBUTES = (
    TPMA_NV.PPWRITE
    | TPMA_NV.WRITEDEFINE
    | TPMA_NV.PPREAD
    | TPMA_NV.OWNERREAD
    | TPMA_NV.AUTHREAD
    | TPMA_NV.PLATFORMCREATE
    | TPMA_NV.NO_DA
)


@dataclass(frozen=True)
class TpmInfo:
    """What the TPM says about itself: the fields an EK certificate carries."""

    manufacturer: int
    model: str
    firmware_version: int


def _pcr_selections(selection: dict[str, Iterable[int]]) -> TPML_PCR_SELECTION:
    """A TPML_PCR_SELECTION: for each bank, a bitmap of the PCRs chosen in it."""
    selections = []
    for bank, pcrs in selection.items():
        select = bytearray(3)
        for index in pcrs:
            select[index // 8] |= 1 << (index % 8)
        selections.append(
            TPMS_PCR_SELECTION(
                hash=BANK_ALGS[bank], sizeofSelect=3, pcrSelect=bytes(select)
            )
        )
    return TPML_PCR_SELECTION(selections)


def _tpmt_ha(bank: str, digest: bytes) -> TPMT_HA:
    """A TPMT_HA: the digest in the union member named after its bank."""
    ha = TPMT_HA(hashAlg=BANK_ALGS[bank])
    setattr(ha.digest, bank, digest)
    return ha


class TpmClient:
    """An open ESAPI connection to one TPM, closed on exit of the `with` block."""

    def __init__(self, tcti: str):
        self.tcti = tcti
        _hold_tcti_library(tcti)
        try:
            self.esys = ESAPI(tcti)
        except TSS2_Exception as exc:
            raise TpmError(f"cannot reach the TPM at {tcti!r}", rc=int(exc.rc)) from exc

    def close(self) -> None:
        """Release the connection."""
        self.esys.close()

    def __enter__(self) -> TpmClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- start-up and shut-down ---------------------------------------------

    def startup(self) -> bool:
        """TPM2_Startup(STATE) to resume saved state, else (CLEAR); True if resumed."""
        try:
            self.esys.startup(TPM2_SU.STATE)
            return True
        except TSS2_Exception as exc:
            # TPM_RC_VALUE: there is no state saved by an orderly
            # TPM2_Shutdown(STATE) (TPM 2.0 Part 3, section 9.3.1), so only a
            # clear start-up is left; TPM_RC_INITIALIZE: already started.
            if exc.error == TPM2_RC.INITIALIZE:
                return True
            if exc.error != TPM2_RC.VALUE:
                raise TpmError("TPM2_Startup(STATE) failed", rc=int(exc.rc)) from exc
        self._call("TPM2_Startup", self.esys.startup, TPM2_SU.CLEAR)
        return False

    def shutdown_state(self) -> None:
        """TPM2_Shutdown(STATE): save PCRs and counters so the next start resumes."""
        self._call("TPM2_Shutdown", self.esys.shutdown, TPM2_SU.STATE)

    def disable_platform_hierarchy(self) -> None:
        """TPM2_HierarchyControl: turn off the platform hierarchy until the next reset.

        Nothing after manufacturing needs it, and with it off a container cannot
        undefine the EK certificate's NV index.
        """
        self._call(
            "TPM2_HierarchyControl",
            self.esys.hierarchy_control,
            ESYS_TR.RH_PLATFORM,
            ESYS_TR.RH_PLATFORM,
            False,
        )

    # -- what the TPM is ------------------------------------------------------

    def info(self) -> TpmInfo:
        """Manufacturer, model string and firmware version from TPM2_GetCapability."""
        _, data = self._call(
            "TPM2_GetCapability",
            self.esys.get_capability,
            TPM2_CAP.TPM_PROPERTIES,
            TPM_PT_MANUFACTURER,
            8,
        )
        props = {int(p.property): int(p.value) for p in data.data.tpmProperties}
        vendor = b"".join(
            props.get(TPM_PT_VENDOR_STRING_1 + i, 0).to_bytes(4, "big")
            for i in range(4)
        )
        return TpmInfo(
            manufacturer=props[TPM_PT_MANUFACTURER],
            model=vendor.rstrip(b"\0").decode("ascii", "replace").strip(),
            firmware_version=props.get(TPM_PT_FIRMWARE_VERSION_1, 0),
        )

    def active_banks(self) -> list[str]:
        """The PCR banks with at least one PCR allocated, by our bank names."""
        _, data = self._call(
            "TPM2_GetCapability", self.esys.get_capability, TPM2_CAP.PCRS, 0, 1
        )
        banks = []
        for selection in data.data.assignedPCR:
            bank = ALG_BANKS.get(int(selection.hash))
            if bank and any(bytes(selection.pcrSelect)[: selection.sizeofSelect]):
                banks.append(bank)
        return banks

    # -- PCRs -------------------------------------------------------------------

    def pcr_read(
        self, pcr: int, banks: Iterable[str] | None = None
    ) -> dict[str, bytes]:
        """The value of one PCR in each bank (all active banks when not given)."""
        names = list(banks) if banks is not None else self.active_banks()
        _, selection, digests = self._call(
            "TPM2_PCR_Read",
            self.esys.pcr_read,
            _pcr_selections({bank: [pcr] for bank in names}),
        )
        read = [ALG_BANKS[int(s.hash)] for s in selection if any(bytes(s.pcrSelect))]
        values = dict(zip(read, (bytes(d) for d in digests), strict=True))
        missing = [bank for bank in names if bank not in values]
        if missing:
            raise TpmError(
                f"PCR {pcr} is not allocated in bank(s) {', '.join(missing)}"
            )
        return values

    def pcr_extend(self, pcr: int, digests: dict[str, bytes]) -> None:
        """One TPM2_PCR_Extend of `pcr` with a digest per bank."""
        values = TPML_DIGEST_VALUES([_tpmt_ha(bank, d) for bank, d in digests.items()])
        self._call("TPM2_PCR_Extend", self.esys.pcr_extend, ESYS_TR.PCR0 + pcr, values)

    def pcr_allocate(self, banks: Iterable[str]) -> None:
        """TPM2_PCR_Allocate: 24 PCRs in each bank chosen, none elsewhere.

        The new allocation takes effect at the next _TPM_Init (a power cycle).
        """
        chosen = set(banks)
        allocation = _pcr_selections(
            {bank: range(24) if bank in chosen else [] for bank in BANK_ALGS}
        )
        allocated, *_ = self._call(
            "TPM2_PCR_Allocate",
            self.esys.pcr_allocate,
            allocation,
            ESYS_TR.RH_PLATFORM,
        )
        if not allocated:
            raise TpmError(f"TPM2_PCR_Allocate refused the banks {sorted(chosen)}")

    # -- keys -------------------------------------------------------------------

    def create_persistent_primary(
        self, template: TPM2B_PUBLIC, persistent_handle: int
    ) -> TPM2B_PUBLIC:
        """TPM2_CreatePrimary in the endorsement hierarchy, made persistent."""
        handle, public, *_ = self._call(
            "TPM2_CreatePrimary",
            self.esys.create_primary,
            TPM2B_SENSITIVE_CREATE(),
            template,
            ESYS_TR.RH_ENDORSEMENT,
        )
        try:
            self._call(
                "TPM2_EvictControl",
                self.esys.evict_control,
                ESYS_TR.RH_OWNER,
                handle,
                persistent_handle,
            )
        finally:
            self.esys.flush_context(handle)
        return public

    def read_public(self, handle: int) -> tuple[TPM2B_PUBLIC, bytes]:
        """The public area and TPM name of a persistent object."""
        tr = self._call("ESYS_TR_FromTPMPublic", self.esys.tr_from_tpmpublic, handle)
        public, name, _ = self._call("TPM2_ReadPublic", self.esys.read_public, tr)
        return public, bytes(name)

    def activate_credential(
        self, ak_handle: int, ek_handle: int, blob: bytes, secret: bytes
    ) -> bytes:
        """TPM2_ActivateCredential: recover a secret only this TPM's EK and AK can."""
        ak = self._call("ESYS_TR_FromTPMPublic", self.esys.tr_from_tpmpublic, ak_handle)
        ek = self._call("ESYS_TR_FromTPMPublic", self.esys.tr_from_tpmpublic, ek_handle)

        # The EK's authPolicy is PolicySecret(TPM_RH_ENDORSEMENT) (EK Credential
        # Profile, section B.6.2), so its use needs a policy session.
        session = self._call(
            "TPM2_StartAuthSession",
            self.esys.start_auth_session,
            ESYS_TR.NONE,
            ESYS_TR.NONE,
            TPM2_SE.POLICY,
            TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
            TPM2_ALG.SHA256,
        )
        try:
            self._call(
                "TPM2_PolicySecret",
                self.esys.policy_secret,
                ESYS_TR.RH_ENDORSEMENT,
                session,
            )
            credential = self._call(
                "TPM2_ActivateCredential",
                self.esys.activate_credential,
                ak,
                ek,
                TPM2B_ID_OBJECT(blob),
                TPM2B_ENCRYPTED_SECRET(secret),
                session1=ESYS_TR.PASSWORD,
                session2=session,
            )
        finally:
            self.esys.flush_context(session)
        return bytes(credential)

    def quote(
        self, ak_handle: int, nonce: bytes, selection: dict[str, list[int]]
    ) -> tuple[bytes, bytes]:
        """TPM2_Quote: the marshaled TPMS_ATTEST and TPMT_SIGNATURE over the PCRs."""
        ak = self._call("ESYS_TR_FromTPMPublic", self.esys.tr_from_tpmpublic, ak_handle)
        pcrs = _pcr_selections(selection)
        attest, signature = self._call("TPM2_Quote", self.esys.quote, ak, pcrs, nonce)
        return bytes(attest), signature.marshal()

    # -- NV ------------------------------------------------------------------------

    def nv_write_ek_certificate(self, nv_index: int, der: bytes) -> None:
        """Define the EK certificate's NV index, write the DER, and lock it."""
        public = TPM2B_NV_PUBLIC(
            nvPublic=TPMS_NV_PUBLIC(
                nvIndex=nv_index,
                nameAlg=TPM2_ALG.SHA256,
                attributes=_EK_CERT_NV_ATTRIBUTES,
                dataSize=len(der),
            )
        )
        index = self._call(
            "TPM2_NV_DefineSpace",
            self.esys.nv_define_space,
            b"",
            public,
            ESYS_TR.RH_PLATFORM,
        )
        for offset in range(0, len(der), _NV_CHUNK):
            self._call(
                "TPM2_NV_Write",
                self.esys.nv_write,
                index,
                der[offset : offset + _NV_CHUNK],
                offset,
                ESYS_TR.RH_PLATFORM,
            )
        self._call(
            "TPM2_NV_WriteLock", self.esys.nv_write_lock, index, ESYS_TR.RH_PLATFORM
        )

    def nv_read(self, nv_index: int) -> bytes:
        """The whole content of an NV index, read with owner authorization."""
        index = self._call(
            "ESYS_TR_FromTPMPublic", self.esys.tr_from_tpmpublic, nv_index
        )
        public, _ = self._call("TPM2_NV_ReadPublic", self.esys.nv_read_public, index)
        size = public.nvPublic.dataSize
        data = bytearray()
        for offset in range(0, size, _NV_CHUNK):
            chunk = self._call(
                "TPM2_NV_Read",
                self.esys.nv_read,
                index,
                min(_NV_CHUNK, size - offset),
                offset,
                ESYS_TR.RH_OWNER,
            )
            data += bytes(chunk)
        return bytes(data)

    def _call(self, command: str, method, *args, **kwargs):
        """Run one ESAPI call, turning TSS errors into a TpmError naming the command."""
        try:
            return method(*args, **kwargs)
        except TSS2_Exception as exc:
            raise TpmError(f"{command} failed: {exc}", rc=int(exc.rc)) from exc


def _hold_tcti_library(tcti: str) -> None:
    """Keep the TCTI library of `tcti` ("swtpm:path=...") loaded in this process.

    tss2-tctildr loads the library (libtss2-tcti-NAME.so.0) for every
    connection and unloads it when the connection closes, so each one would
    load and relocate it again: half the CPU of opening a connection, which
    the daemon does several times per container. A handle held here keeps
    the library loaded and makes the loader's dlopen a reference count.
    """
    name = tcti.partition(":")[0]
    if name in _TCTI_LIBRARIES:
        return
    library = None
    # A TCTI this cannot find, or a name no library can have, is tctildr's
    # to report (or to find elsewhere).
    with contextlib.suppress(OSError, ValueError):
        library = ctypes.CDLL(f"libtss2-tcti-{name}.so.0")
    _TCTI_LIBRARIES[name] = library
