"""cvtpm.server."""
