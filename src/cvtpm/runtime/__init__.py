"""cvtpm.runtime."""
