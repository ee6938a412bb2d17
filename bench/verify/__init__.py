"""Verification throughput: cvtpm's verifier against Keylime's and evmctl."""
