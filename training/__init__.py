"""Training: a run's data and folds, the loops, the run folder and its checkpoints, the
weights a run starts from, the settings table, and repeated seeds (--seeds)."""
