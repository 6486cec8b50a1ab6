"""Benchmarks for casgate; run them with `make bench` (bench/run.py), never from the test suite."""
