"""cvtpm.vtpm."""
