"""``distill.train.session.loop_overrides``: the command line's loop settings reach the loop's
config under its own names, and a flag left out leaves the loop's default."""

from __future__ import annotations

from audit.cli.main import build_parser
from distill.train.loop import LoopConfig
from distill.train.session import loop_overrides


def parsed(*argv: str):
    return build_parser().parse_args(["distill", "plan.yaml", "--attestation", "audit.intoto.json", *argv])


def test_flags_map_to_loop_settings_and_absent_flags_keep_the_defaults():
    assert loop_overrides(parsed()) == {}
    overrides = loop_overrides(parsed("--reduce-every-micro-step", "--offload", "--grad-accum", "4",
                                      "--no-tensorboard"))
    assert overrides == {"defer_reduction": False, "offload": True, "grad_accum": 4, "tensorboard": False}
    assert set(overrides) <= set(LoopConfig.model_fields)
    assert LoopConfig.model_fields["defer_reduction"].default is True
