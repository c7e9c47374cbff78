"""Learning-rate tuning with Optuna: search, one trial's objective, storage and dead workers."""
