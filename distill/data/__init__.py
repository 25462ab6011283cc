"""Training data: readers, packing and manifests (training_data), prepared token shards (shards)
and their preparation (prepare).

Imports: runtime; and audit."""
