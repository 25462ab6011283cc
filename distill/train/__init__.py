"""The two recipes (logit KD: trainer; sequence KD: sequence), the loop they share, the loss
kernels, the teacher-logit cache, evaluation and a gated run's shared steps.

Imports: gate, data, outputs, runtime; and audit."""
