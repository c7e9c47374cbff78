"""The comparison study: its stages, seed statistics, results.json and cost."""
