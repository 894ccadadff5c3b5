"""Training one run, or several as one grouped network: the loop, the device and its math,
optimizers and schedules, augmentation, metrics and the run folder."""
