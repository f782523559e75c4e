"""Test and demo harness, kept apart from the product code.

Synthetic traffic, fault injection and the judge's simulation; used by `mlops traffic`, the
rollout tests and the benchmarks.
"""
