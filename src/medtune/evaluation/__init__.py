"""Evaluation: NLL sums per example, bootstrap intervals, generation and answer quality."""
