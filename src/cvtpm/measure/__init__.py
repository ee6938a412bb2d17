"""cvtpm.measure."""
