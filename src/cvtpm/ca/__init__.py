"""cvtpm.ca."""
