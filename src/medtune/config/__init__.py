"""Configuration: typed sections, presets, the identity table and checks before any weights load."""
