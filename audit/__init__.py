"""flopgate's audit half: plan schema, FLOP counter, run-level compute, policy engine,
attestations, HTML report and the command line.

Dependencies flow one way: ``distill`` -> ``audit`` -> ``policies``.
"""

__version__ = "0.1.0"
