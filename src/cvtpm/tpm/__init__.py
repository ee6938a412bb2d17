"""cvtpm.tpm."""
