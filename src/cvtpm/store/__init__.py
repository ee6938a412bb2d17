"""cvtpm.store."""
