"""cvtpm's benchmarks: each figure measured against its alternative in the same run."""
