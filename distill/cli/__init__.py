"""The training half's flopgate commands (distill, generate, data prepare): flags in, exit codes
out; registered by the flopgate.commands entry points.

Imports: train, generation, gate, data, outputs, runtime; and audit."""
