"""flopgate's training half, in wings; imports run one way, top to bottom
(tests/test_import_graph.py checks it; docs/architecture.md draws it):

cli/         the commands (distill, generate, data prepare)
train/       the recipes, the loop, losses, the teacher-logit cache, evaluation
generation/  flopgate generate's backends, retries and journal
gate/        may this run happen: the verified audit, preflight, the meter, ledger charges (open_gate)
data/        training data: readers, packing, manifests, shards
outputs/     what a run leaves: run and generation records, report, model card, exported student
runtime/     the torch machinery: models, process groups, FSDP2, checkpoints

Depends on ``audit``; never the other way round."""
