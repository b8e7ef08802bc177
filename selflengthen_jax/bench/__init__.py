"""Benchmarks: how fast, how big and how correct a run is on the devices at hand."""
