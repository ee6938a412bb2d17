"""cvtpm.attest."""
