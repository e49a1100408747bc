"""Benchmarks (not tests). Run with scripts/bench."""
