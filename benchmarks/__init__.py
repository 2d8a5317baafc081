"""Benchmarks: ``python -m benchmarks [NAME...]`` prints a table and writes JSON.

Every figure a benchmark reports as a target is a ratio between numbers
measured in the same run, on the same machine.
"""
