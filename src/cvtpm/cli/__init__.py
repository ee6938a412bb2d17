"""cvtpm.cli."""
