"""Terminal helpers shared by check and policy."""

from audit.cli.terminal import first_sentence, hardware_line


def test_a_table_cell_gets_the_notes_first_sentence():
    note = ("rescinded on 2025-05-13; not in force on 2026-12-07. Effective 2025-01-13, but compliance was "
            "not required until 2025-05-15. On 2025-05-13 BIS announced ...")
    assert first_sentence(note) == "rescinded on 2025-05-13; not in force on 2026-12-07."
    assert first_sentence("one sentence only") == "one sentence only"
    weak = "rescinded on 2025-05-13. A removal notice was not verified [secondary]. More [unverified]."
    assert first_sentence(weak) == "rescinded on 2025-05-13. [secondary] [unverified]"


def test_a_hardware_estimate_outside_tolerance_says_what_decides():
    line = hardware_line({"estimate_flops": 1.09e22, "ratio": 3.6, "outside_tolerance": True})
    assert line.startswith("1.09e22 FLOP (3.6× the count)  OUTSIDE ±30% of the count")
    assert "the count decides the outcome" in line and "hardware.hours" in line
    assert "OUTSIDE" not in hardware_line({"estimate_flops": 1.0e22, "ratio": 1.1, "outside_tolerance": False})
