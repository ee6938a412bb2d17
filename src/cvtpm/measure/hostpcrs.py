"""The host TPM's boot PCRs, that a container list's boot_aggregate is made from."""

from __future__ import annotations

from pathlib import Path


def default_host_pcrs(
    device: str = "/dev/tpmrm0",
) -> dict[str, dict[int, bytes]] | None:
    """PCRs 0-9 of the host TPM in its sha1 and sha256 banks, or None without one."""
    if not Path(device).exists():
        return None
    from cvtpm.tpm.client import TpmClient

    with TpmClient(f"device:{device}") as tpm:
        banks = [b for b in tpm.active_banks() if b in ("sha1", "sha256")]
        values: dict[str, dict[int, bytes]] = {bank: {} for bank in banks}
        for index in range(10):
            for bank, value in tpm.pcr_read(index, banks).items():
                values[bank][index] = value
    return values
