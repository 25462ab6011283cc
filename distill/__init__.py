"""flopgate's training half: the gate, the trainer, the compute meter, checkpoints and run
records. Depends on ``audit``; never the other way round."""
