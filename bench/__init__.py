"""Benchmarks (run as scripts: python bench/training_throughput.py)."""
