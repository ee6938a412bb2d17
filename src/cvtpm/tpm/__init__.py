"""Talking to TPMs through tpm2-pytss, and decoding TPM structures."""

import os

# libtss2 logs every TPM error response at WARNING or ERROR on stderr, including
# the ones cvtpm expects and handles (e.g. TPM2_Startup(STATE) with nothing
# saved). Errors reach callers as exceptions instead; TSS2_LOG still wins.
os.environ.setdefault("TSS2_LOG", "all+NONE")
