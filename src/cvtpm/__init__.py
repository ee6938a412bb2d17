"""cvtpm: a virtual TPM 2.0 and an IMA measurement list for every container."""

__version__ = "0.1.0"
