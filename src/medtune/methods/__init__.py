"""Fine-tuning methods: the registry (registry.py) and one module per method."""
