"""Training: state and EMA, optimiser, sharded steps, the loop, checkpoints, one task per stage."""
