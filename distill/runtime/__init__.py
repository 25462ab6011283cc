"""The torch machinery under every recipe: model loading, process groups, FSDP2 and checkpoints.

Imports: nothing else of distill; and audit."""
