"""Benchmarks (`make bench`): run as scripts, never collected as tests."""
