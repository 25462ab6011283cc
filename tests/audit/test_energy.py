"""The energy arithmetic: measured, estimated, unavailable; conversions; the record's block."""

import pytest

from audit import energy
from audit.compute.tables import load_reference_tables
from audit.errors import InputError


@pytest.fixture
def tables():
    return load_reference_tables()


def test_conversions():
    assert energy.kwh(3.6e6) == 1.0
    assert energy.mwh(7.2e9) == 2.0
    assert energy.kwh(None) is None and energy.mwh(None) is None


def test_measured_is_the_counters_times_the_pue():
    e = energy.measured(7.2e6, pue=1.2, pue_source="the plan's hardware.pue", devices=["H100", "H100"])
    assert e.status == "measured"
    assert e.device_joules == 7.2e6
    assert e.joules == pytest.approx(8.64e6)
    assert e.kwh == pytest.approx(2.4)
    assert "2 device(s)" in e.method and "1.2" in e.method and "NVML" in e.method


def test_estimate_is_hours_times_board_power_times_pue():
    # 8 accelerators x 10 h = 80 accelerator-hours; x 700 W = 56 kWh; x 1.5 = 84 kWh
    e = energy.estimated(80, 700, power_source="H100 board power", pue=1.5, pue_source="stated", reason="CPU")
    assert e.status == "estimated"
    assert e.device_joules == pytest.approx(80 * 700 * 3600)
    assert e.kwh == pytest.approx(84.0)
    assert e.mwh == pytest.approx(0.084)
    assert energy.describe_mwh(e) == "8.4e-2 MWh (estimated)"
    assert "80 accelerator-hours" in e.method and "700 W" in e.method and "56 kWh" in e.method


def test_unavailable_has_no_joules():
    e = energy.unavailable("no counter")
    assert e.joules is None and e.kwh is None and e.pue is None
    assert e.summary() == "unavailable" and energy.describe_mwh(e) == "unavailable"
    assert e.co2_grams(300) is None


def test_co2_is_kwh_times_grid_intensity():
    e = energy.estimated(1, 1000, power_source="s", pue=1.0, pue_source="s", reason="r")  # 1 kWh
    assert e.co2_grams(250) == pytest.approx(250.0)
    assert e.co2_grams(None) is None


def test_run_energy_measured_uses_the_table_default_pue(tables):
    e = energy.run_energy(3.6e6, 2.0, devices=["NVIDIA H100 80GB HBM3"], device_name="NVIDIA H100 80GB HBM3",
                          device_type="cuda", plan_hardware=None, tables=tables)
    default = tables.hardware.default_pue.value
    assert e.status == "measured" and e.joules == pytest.approx(3.6e6 * default) and e.pue == default


def test_run_energy_estimates_from_the_device_name(tables):
    e = energy.run_energy(None, 2.0, devices=[], device_name="NVIDIA H100 80GB HBM3", device_type="cuda",
                          plan_hardware={"pue": 1.1}, tables=tables, reason="counter not supported")
    assert e.status == "estimated"
    assert e.board_power_w == tables.find_accelerator("H100-SXM").board_power_w
    assert e.joules == pytest.approx(2.0 * e.board_power_w * 3600 * 1.1)
    assert "counter not supported" in e.method


def test_plan_power_replaces_the_table(tables):
    e = energy.run_energy(None, 3.0, devices=[], device_name="cpu", device_type="cpu",
                          plan_hardware={"accelerator": "H100", "power_w": 250}, tables=tables)
    assert e.status == "estimated" and e.board_power_w == 250
    assert e.device_joules == pytest.approx(3.0 * 250 * 3600)


def test_cpu_without_a_stated_power_is_unavailable(tables):
    # the plan's accelerator is not what ran: its board power is not used for a CPU run
    e = energy.run_energy(None, 3.0, devices=[], device_name="cpu", device_type="cpu",
                          plan_hardware={"accelerator": "H100"}, tables=tables, reason="NVML is not installed")
    assert e.status == "unavailable" and e.joules is None
    assert "hardware.power_w" in e.method


def test_unknown_gpu_falls_back_to_the_plans_accelerator(tables):
    e = energy.run_energy(None, 1.0, devices=[], device_name="Some Future GPU", device_type="cuda",
                          plan_hardware={"accelerator": "A100"}, tables=tables)
    assert e.status == "estimated" and e.board_power_w == tables.find_accelerator("A100").board_power_w


def test_match_accelerator_prefers_the_longest_name(tables):
    assert energy.match_accelerator("NVIDIA H100 NVL", tables).id == "H100-NVL"
    assert energy.match_accelerator("NVIDIA H100 80GB HBM3", tables).id == "H100-SXM"
    assert energy.match_accelerator("NVIDIA A100-SXM4-80GB", tables).id == "A100"
    assert energy.match_accelerator("NVIDIA GeForce RTX 4090", tables) is None


def test_record_block_round_trips_with_the_agreed_keys():
    e = energy.estimated(2, 400, power_source="s", pue=1.56, pue_source="d", reason="r")
    block = e.to_dict()
    assert {"joules", "status", "method", "pue"} <= set(block)
    assert energy.Energy.from_dict(block) == e


@pytest.mark.parametrize("block, field", [
    ({"joules": 1.0, "status": "guessed", "method": "m", "pue": 1.0}, "status"),
    ({"joules": None, "status": "measured", "method": "m", "pue": 1.0}, "joules"),
    ({"joules": 5.0, "status": "unavailable", "method": "m", "pue": None}, "joules"),
    ({"joules": float("nan"), "status": "measured", "method": "m", "pue": 1.0}, "joules"),
    ({"joules": 1.0, "status": "measured", "method": 3, "pue": 1.0}, "method"),
    ({"joules": True, "status": "measured", "method": "m", "pue": 1.0}, "joules"),
])
def test_misshaped_blocks_are_refused(block, field):
    with pytest.raises(InputError) as info:
        energy.Energy.from_dict(block)
    assert info.value.field == field


def test_every_board_power_in_the_table_is_cited(tables):
    powered = [a for a in tables.hardware.accelerators if a.board_power_w is not None]
    assert powered, "the table has no board power at all"
    for entry in powered:
        assert entry.board_power_source.url.startswith("https://")
    assert tables.hardware.default_pue.value >= 1.0
