"""Helpers shared by several test directories and the benchmarks."""
