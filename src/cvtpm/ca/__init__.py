"""The local CA that certifies every vTPM's endorsement and attestation keys."""

from cvtpm.ca.authority import LocalCa, TpmIdentity

__all__ = ["LocalCa", "TpmIdentity"]
