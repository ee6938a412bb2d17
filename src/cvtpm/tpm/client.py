"""A connection to one TPM, with the few commands cvtpm needs, on tpm2-pytss."""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from tpm2_pytss import ESAPI, TSS2_Exception
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_CC,
    TPM2_RC,
    TPM2_RH,
    TPM2_SE,
    TPM2_SU,
    TPMA_NV,
)
from tpm2_pytss.TCTILdr import TCTILdr
from tpm2_pytss.types import (
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_NV_PUBLIC,
    TPM2B_PUBLIC,
    TPMS_NV_PUBLIC,
    TPMT_SYM_DEF,
)

from cvtpm.errors import TpmError
from cvtpm.ima.entry import BANK_SIZES, PCR_COUNT
from cvtpm.tpm._cursor import Cursor, marshal_tpm2b, marshal_u16, marshal_u32
from cvtpm.tpm.command import (
    CommandChannel,
    Overlapped,
    Response,
    reading,
    response_code,
    unmarshal,
)
from cvtpm.tpm.structures import (
    PcrSelection,
    marshal_tpml_pcr_selection,
    read_pcr_selections,
    unmarshal_tpmt_signature,
)

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

# TPM2B_SENSITIVE_CREATE with an empty userAuth and data (Part 2, 11.1.15).
_EMPTY_SENSITIVE_CREATE = marshal_tpm2b(marshal_tpm2b(b"") + marshal_tpm2b(b""))

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


def _pcr_selection(selection: dict[str, Iterable[int]]) -> bytes:
    """A marshaled TPML_PCR_SELECTION: for each bank, the PCRs chosen in it.

    Marshaled by cvtpm.tpm.structures, as the other lists here are by hand:
    through tpm2-pytss's types one took 40 to 140 us, and PCR_Extend is on
    every measurement's path.
    """
    chosen = []
    for bank, pcrs in selection.items():
        _check_bank(bank)
        pcrs = tuple(pcrs)
        for index in pcrs:
            _check_pcr(index)
        chosen.append(PcrSelection(bank, pcrs))
    return marshal_tpml_pcr_selection(chosen)


def _digest_values(digests: dict[str, bytes]) -> bytes:
    """A marshaled TPML_DIGEST_VALUES (Part 2, 10.9.6): hashAlg, then the digest."""
    out = [marshal_u32(len(digests))]
    for bank, digest in digests.items():
        _check_bank(bank)
        if len(digest) != BANK_SIZES[bank]:
            raise ValueError(
                f"a {bank} digest has {BANK_SIZES[bank]} bytes, not {len(digest)}"
            )
        out.append(marshal_u16(BANK_ALGS[bank]) + digest)
    return b"".join(out)


def _check_bank(bank: str) -> None:
    if bank not in BANK_ALGS:
        raise ValueError(
            f"PCR bank {bank!r} is not one cvtpm uses; expected one of "
            + ", ".join(BANK_ALGS)
        )


def _check_pcr(index: int) -> None:
    # The PC Client profile's 24 PCRs, which libtpms implements.
    if not 0 <= index < PCR_COUNT:
        raise ValueError(f"PCR index {index} is out of range 0-{PCR_COUNT - 1}")


class TpmClient:
    """An open connection to one TPM, closed on exit of the `with` block.

    Commands are framed by cvtpm.tpm.command and sent on the TCTI directly;
    only activate_credential, which needs a policy session, opens ESAPI.
    """

    def __init__(self, tcti: str):
        self.tcti = tcti
        self._channel = _open_channel(tcti)

    def close(self) -> None:
        """Release the connection."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def __enter__(self) -> TpmClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _execute(self, command: str, code: int, *args, **kwargs) -> Response:
        return self._open().execute(command, code, *args, **kwargs)

    def _open(self) -> CommandChannel:
        if self._channel is None:
            self._channel = _open_channel(self.tcti)
        return self._channel

    @contextlib.contextmanager
    def overlap(self, work: Callable[..., Any], *args: Any) -> Iterator[Overlapped]:
        """Run `work(*args)` while the TPM executes the block's first command.

        For CPU work of ours that does not depend on that command (signing a
        certificate while the TPM derives a key): the two run side by side.
        The work's value, or its error, comes from the yielded `result()`; if
        the block fails too, the work's error is noted on the block's. On
        swtpm's socket the command's connection stays open while the work
        runs, and swtpm serves one connection at a time: keep the work short.
        """
        channel = self._open()
        job = Overlapped(work, *args)
        channel.meanwhile = job
        try:
            yield job
        except BaseException as exc:
            if job.error is not None:
                what = getattr(work, "__name__", repr(work))
                exc.add_note(f"meanwhile, {what} failed: {job.error!r}")
            raise
        finally:
            if channel.meanwhile is job:  # the block sent no command
                channel.meanwhile = None

    # -- start-up and shut-down ---------------------------------------------

    def startup(self) -> bool:
        """TPM2_Startup(STATE) to resume saved state, else (CLEAR); True if resumed."""
        try:
            self._execute(
                "TPM2_Startup", TPM2_CC.Startup, (), marshal_u16(TPM2_SU.STATE)
            )
            return True
        except TpmError as exc:
            # TPM_RC_VALUE: there is no state saved by an orderly
            # TPM2_Shutdown(STATE) (TPM 2.0 Part 3, section 9.3.1), so only a
            # clear start-up is left; TPM_RC_INITIALIZE: already started.
            code = None if exc.rc is None else response_code(exc.rc)
            if code == TPM2_RC.INITIALIZE:
                return True
            if code != TPM2_RC.VALUE:
                raise TpmError("TPM2_Startup(STATE) failed", rc=exc.rc) from exc
        self.startup_clear()
        return False

    def startup_clear(self) -> None:
        """TPM2_Startup(CLEAR) alone: for a TPM just made, or reset without a
        TPM2_Shutdown(STATE), which has nothing to resume (see `startup`)."""
        self._execute("TPM2_Startup", TPM2_CC.Startup, (), marshal_u16(TPM2_SU.CLEAR))

    def shutdown_state(self) -> None:
        """TPM2_Shutdown(STATE): save PCRs and counters so the next start resumes."""
        self._execute("TPM2_Shutdown", TPM2_CC.Shutdown, (), marshal_u16(TPM2_SU.STATE))

    def disable_platform_hierarchy(self) -> None:
        """TPM2_HierarchyControl: turn off the platform hierarchy until the next reset.

        Nothing after manufacturing needs it, and with it off a container cannot
        undefine the EK certificate's NV index.
        """
        self._execute(
            "TPM2_HierarchyControl",
            TPM2_CC.HierarchyControl,
            (TPM2_RH.PLATFORM,),
            marshal_u32(TPM2_RH.PLATFORM) + b"\x00",  # enable, state = NO
            authorized=1,
        )

    # -- what the TPM is ------------------------------------------------------

    def info(self) -> TpmInfo:
        """Manufacturer, model string and firmware version from TPM2_GetCapability."""
        reply = self._capability(TPM2_CAP.TPM_PROPERTIES, TPM_PT_MANUFACTURER, 8)
        with reading("TPM2_GetCapability"):
            # TPML_TAGGED_TPM_PROPERTY: a count, then (property, value) pairs.
            count = reply.u32("count")
            props = dict(
                (reply.u32("property"), reply.u32("value")) for _ in range(count)
            )
            reply.done()
        if TPM_PT_MANUFACTURER not in props:
            raise TpmError("TPM2_GetCapability: the TPM gave no TPM_PT_MANUFACTURER")
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
        reply = self._capability(TPM2_CAP.PCRS, 0, 1)
        with reading("TPM2_GetCapability"):
            selections = read_pcr_selections(reply)
            reply.done()
        return [s.bank for s in selections if s.pcrs and s.bank in BANK_ALGS]

    def _capability(self, capability: int, first: int, count: int) -> Cursor:
        """The capability data of TPM2_GetCapability, past its `capability` field."""
        reply = self._execute(
            "TPM2_GetCapability",
            TPM2_CC.GetCapability,
            (),
            marshal_u32(capability) + marshal_u32(first) + marshal_u32(count),
        ).parameters
        with reading("TPM2_GetCapability"):
            reply.u8("moreData")
            answered = reply.u32("capability")
        if answered != capability:
            raise TpmError(
                f"TPM2_GetCapability: asked for capability {capability:#x}, "
                f"got {answered:#x}"
            )
        return reply

    # -- PCRs -------------------------------------------------------------------

    def pcr_read(
        self, pcr: int, banks: Iterable[str] | None = None
    ) -> dict[str, bytes]:
        """The value of one PCR in each bank (all active banks when not given)."""
        names = list(banks) if banks is not None else self.active_banks()
        reply = self._execute(
            "TPM2_PCR_Read",
            TPM2_CC.PCR_Read,
            (),
            _pcr_selection({bank: [pcr] for bank in names}),
        ).parameters
        with reading("TPM2_PCR_Read"):
            reply.u32("pcrUpdateCounter")
            read = [s.bank for s in read_pcr_selections(reply) if s.pcrs]
            digests = [reply.tpm2b("digest") for _ in range(reply.u32("count"))]
            reply.done()
        if len(read) != len(digests):
            raise TpmError("TPM2_PCR_Read: as many selections as digests expected")
        values = dict(zip(read, digests, strict=True))
        missing = [bank for bank in names if bank not in values]
        if missing:
            raise TpmError(
                f"PCR {pcr} is not allocated in bank(s) {', '.join(missing)}"
            )
        return values

    def pcr_extend(self, pcr: int, digests: dict[str, bytes]) -> None:
        """One TPM2_PCR_Extend of `pcr` with a digest per bank."""
        _check_pcr(pcr)
        self._execute(
            "TPM2_PCR_Extend",
            TPM2_CC.PCR_Extend,
            (pcr,),
            _digest_values(digests),
            authorized=1,
        )

    def pcr_allocate(self, banks: Iterable[str]) -> None:
        """TPM2_PCR_Allocate: 24 PCRs in each bank chosen, none elsewhere.

        The new allocation takes effect at the next _TPM_Init (a power cycle).
        """
        chosen = set(banks)
        allocation = _pcr_selection(
            {bank: range(24) if bank in chosen else [] for bank in BANK_ALGS}
        )
        reply = self._execute(
            "TPM2_PCR_Allocate",
            TPM2_CC.PCR_Allocate,
            (TPM2_RH.PLATFORM,),
            allocation,
            authorized=1,
        ).parameters
        if not reply.u8("allocationSuccess"):
            raise TpmError(f"TPM2_PCR_Allocate refused the banks {sorted(chosen)}")

    # -- keys -------------------------------------------------------------------

    def create_persistent_primary(
        self, template: bytes, persistent_handle: int
    ) -> tuple[bytes, bytes]:
        """TPM2_CreatePrimary in the endorsement hierarchy, made persistent.

        `template` is a marshaled TPM2B_PUBLIC (cvtpm.tpm.templates). Returns
        the marshaled TPM2B_PUBLIC made (for cvtpm.tpm.structures) and the TPM
        name, which is the same for the transient and persistent handles.
        """
        created = self._execute(
            "TPM2_CreatePrimary",
            TPM2_CC.CreatePrimary,
            (TPM2_RH.ENDORSEMENT,),
            _EMPTY_SENSITIVE_CREATE
            + template
            + marshal_tpm2b(b"")  # outsideInfo
            + marshal_u32(0),  # creationPCR: none
            authorized=1,
            response_handles=1,
        )
        (handle,) = created.handles
        try:
            with reading("TPM2_CreatePrimary"):
                reply = created.parameters
                public = reply.tpm2b("outPublic")
                reply.tpm2b("creationData")
                reply.tpm2b("creationHash")
                # TPMT_TK_CREATION: tag, hierarchy, digest.
                reply.take(6, "creationTicket")
                reply.tpm2b("creationTicket.digest")
                name = reply.tpm2b("name")
                reply.done()
            self._execute(
                "TPM2_EvictControl",
                TPM2_CC.EvictControl,
                (TPM2_RH.OWNER, handle),
                marshal_u32(persistent_handle),
                authorized=1,
            )
        except BaseException:
            self._flush_after_error(handle)
            raise
        self._execute(
            "TPM2_FlushContext", TPM2_CC.FlushContext, (), marshal_u32(handle)
        )
        return marshal_tpm2b(public), name

    def _flush_after_error(self, handle: int) -> None:
        """Flush a transient object on the way out of an error it must not hide."""
        with contextlib.suppress(TpmError):
            self._execute(
                "TPM2_FlushContext", TPM2_CC.FlushContext, (), marshal_u32(handle)
            )

    def read_public(self, handle: int) -> tuple[TPM2B_PUBLIC, bytes]:
        """The public area and TPM name of a persistent object."""
        reply = self._execute(
            "TPM2_ReadPublic", TPM2_CC.ReadPublic, (handle,)
        ).parameters
        public = unmarshal(reply, TPM2B_PUBLIC, "outPublic")
        with reading("TPM2_ReadPublic"):
            name = reply.tpm2b("name")
            reply.tpm2b("qualifiedName")
            reply.done()
        return public, name

    def activate_credential(
        self, ak_handle: int, ek_handle: int, blob: bytes, secret: bytes
    ) -> bytes:
        """TPM2_ActivateCredential: recover a secret only this TPM's EK and AK can.

        The EK's authPolicy is PolicySecret(TPM_RH_ENDORSEMENT) (EK Credential
        Profile, section B.6.2), so its use needs a policy session: this is
        the one command that goes through ESAPI, on a connection of its own.
        """
        # One connection at a time: a TCTI such as device:/dev/tpm0 admits one.
        self.close()
        try:
            esys = ESAPI(self.tcti)
        except TSS2_Exception as exc:
            raise TpmError(
                f"cannot reach the TPM at {self.tcti!r}", rc=int(exc.rc)
            ) from exc
        try:
            return _activate(esys, ak_handle, ek_handle, blob, secret)
        finally:
            esys.close()

    def quote(
        self, ak_handle: int, nonce: bytes, selection: dict[str, list[int]]
    ) -> tuple[bytes, bytes]:
        """TPM2_Quote: the marshaled TPMS_ATTEST and TPMT_SIGNATURE over the PCRs."""
        reply = self._execute(
            "TPM2_Quote",
            TPM2_CC.Quote,
            (ak_handle,),
            marshal_tpm2b(nonce)  # qualifyingData
            + marshal_u16(TPM2_ALG.NULL)  # inScheme: the AK's own
            + _pcr_selection(selection),
            authorized=1,
        ).parameters
        with reading("TPM2_Quote"):
            attest = reply.tpm2b("quoted")
            # The TPMT_SIGNATURE is the rest of the parameters.
            signature = reply.data[reply.offset :]
            unmarshal_tpmt_signature(signature)
        return attest, signature

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
        platform = (TPM2_RH.PLATFORM,)
        self._execute(
            "TPM2_NV_DefineSpace",
            TPM2_CC.NV_DefineSpace,
            platform,
            marshal_tpm2b(b"") + public.marshal(),
            authorized=1,
        )
        for offset in range(0, len(der), _NV_CHUNK):
            self._execute(
                "TPM2_NV_Write",
                TPM2_CC.NV_Write,
                (TPM2_RH.PLATFORM, nv_index),
                marshal_tpm2b(der[offset : offset + _NV_CHUNK]) + marshal_u16(offset),
                authorized=1,
            )
        self._execute(
            "TPM2_NV_WriteLock",
            TPM2_CC.NV_WriteLock,
            (TPM2_RH.PLATFORM, nv_index),
            authorized=1,
        )

    def nv_read(self, nv_index: int) -> bytes:
        """The whole content of an NV index, read with owner authorization."""
        reply = self._execute(
            "TPM2_NV_ReadPublic", TPM2_CC.NV_ReadPublic, (nv_index,)
        ).parameters
        size = unmarshal(reply, TPM2B_NV_PUBLIC, "nvPublic").nvPublic.dataSize
        with reading("TPM2_NV_ReadPublic"):
            reply.tpm2b("nvName")
            reply.done()
        data = bytearray()
        for offset in range(0, size, _NV_CHUNK):
            chunk = self._execute(
                "TPM2_NV_Read",
                TPM2_CC.NV_Read,
                (TPM2_RH.OWNER, nv_index),
                marshal_u16(min(_NV_CHUNK, size - offset)) + marshal_u16(offset),
                authorized=1,
            ).parameters
            with reading("TPM2_NV_Read"):
                data += chunk.tpm2b("data")
                chunk.done()
        return bytes(data)


def _open_channel(tcti: str) -> CommandChannel:
    """A command channel on the TCTI `tcti` ("swtpm:path=..."), or TpmError."""
    _hold_tcti_library(tcti)
    try:
        return CommandChannel(TCTILdr.parse(tcti))
    except (TSS2_Exception, RuntimeError, ValueError) as exc:
        rc = int(exc.rc) if isinstance(exc, TSS2_Exception) else None
        raise TpmError(f"cannot reach the TPM at {tcti!r}", rc=rc) from exc


def _activate(
    esys: ESAPI, ak_handle: int, ek_handle: int, blob: bytes, secret: bytes
) -> bytes:
    """TPM2_ActivateCredential through ESAPI, in a PolicySecret session."""

    def call(command, method, *args, **kwargs):
        try:
            return method(*args, **kwargs)
        except TSS2_Exception as exc:
            raise TpmError(f"{command} failed: {exc}", rc=int(exc.rc)) from exc

    ak = call("ESYS_TR_FromTPMPublic", esys.tr_from_tpmpublic, ak_handle)
    ek = call("ESYS_TR_FromTPMPublic", esys.tr_from_tpmpublic, ek_handle)
    session = call(
        "TPM2_StartAuthSession",
        esys.start_auth_session,
        ESYS_TR.NONE,
        ESYS_TR.NONE,
        TPM2_SE.POLICY,
        TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
        TPM2_ALG.SHA256,
    )
    try:
        call("TPM2_PolicySecret", esys.policy_secret, ESYS_TR.RH_ENDORSEMENT, session)
        credential = call(
            "TPM2_ActivateCredential",
            esys.activate_credential,
            ak,
            ek,
            TPM2B_ID_OBJECT(blob),
            TPM2B_ENCRYPTED_SECRET(secret),
            session1=ESYS_TR.PASSWORD,
            session2=session,
        )
    except BaseException:
        # The activation's error is the one to see, not a failed flush after it.
        with contextlib.suppress(TSS2_Exception):
            esys.flush_context(session)
        raise
    call("TPM2_FlushContext", esys.flush_context, session)
    return bytes(credential)


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
