"""The model of benchmarks/fair.py: one table, read by primary key."""
