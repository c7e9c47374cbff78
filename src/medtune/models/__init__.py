"""Models: resolve a spec and load it, families, trained weights, inference, export."""
