"""Run-level compute: every component of a distillation run's training compute, in FLOP.

Convention everywhere: one multiply-add = 2 FLOP.
"""

from audit.compute.types import Component, ComputeEstimate, HardwareCheck  # noqa: F401
