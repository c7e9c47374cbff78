"""Data: sources -> clean -> split -> tokenize -> batches."""
