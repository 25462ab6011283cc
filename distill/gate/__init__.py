"""May this run or job happen: the verified audit (checks), preflight and model checks, the compute
meter and the ledger charges, and the gate inside Hugging Face trainers (hf); open_gate is the
one entry point.

Imports: data, outputs, runtime; and audit."""

from distill.gate.gated_run import GateRefused, GatedRun, open_gate

__all__ = ['GateRefused', 'GatedRun', 'open_gate']
