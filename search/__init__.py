"""How candidates are proposed: evolutionary operators, the LongRoPE Optuna
sampler, the ask/dispatch/tell driver with its backends, stages, and the CLI."""
