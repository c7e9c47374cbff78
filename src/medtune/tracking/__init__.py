"""Experiment trackers: a comparison folder logged to MLflow (the `track` extra)."""
