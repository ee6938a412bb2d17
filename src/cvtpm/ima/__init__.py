"""cvtpm.ima."""
