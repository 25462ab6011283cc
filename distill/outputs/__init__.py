"""What a run or job leaves behind: the signed run and generation records, the run report, the
model card, the exported student and the run log.

Imports: runtime; and audit."""
