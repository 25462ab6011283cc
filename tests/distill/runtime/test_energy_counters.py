"""The NVML energy reader, against a fake ``pynvml`` module (no GPU needed): counter values,
wrap-around and reset, a device without the counter, NVML failing to start, no pynvml at all."""

import sys
import types

import pytest

from distill.runtime import energy as runtime_energy
from distill.runtime.energy import EnergyMeter, counter_delta


class FakeNVMLError(Exception):
    def __init__(self, value):
        self.value = value
        super().__init__(f"NVML error {value}")


def fake_pynvml(readings: dict, *, init_error=None, names=None):
    """A module with the calls the meter makes; ``readings[index]``: the counter values (mJ)
    read one after the other, or an int error code that every read raises."""
    module = types.ModuleType("pynvml")
    module.NVML_ERROR_NOT_SUPPORTED = 3
    module.NVMLError = FakeNVMLError
    module.calls = []

    def init():
        if init_error is not None:
            raise FakeNVMLError(init_error)

    def energy(handle):
        module.calls.append(handle)
        values = readings[handle]
        if isinstance(values, int):
            raise FakeNVMLError(values)
        return values.pop(0)

    module.nvmlInit = init
    module.nvmlShutdown = lambda: None
    module.nvmlDeviceGetHandleByIndex = lambda index: index
    module.nvmlDeviceGetHandleByUUID = lambda uuid: uuid
    module.nvmlDeviceGetName = lambda handle: (names or {}).get(handle, b"NVIDIA H100 80GB HBM3")
    module.nvmlDeviceGetTotalEnergyConsumption = energy
    return module


@pytest.fixture
def install(monkeypatch):
    def put(module):
        monkeypatch.setitem(sys.modules, "pynvml", module)
        return module
    return put


def test_counter_delta():
    assert counter_delta(1_000, 4_500) == 3_500
    assert counter_delta(2**64 - 100, 50) == 150            # wrapped past 2^64
    assert counter_delta(5_000_000, 1_200) == 1_200          # reset (driver reload): the energy since


def test_measures_the_counter_differences(install):
    install(fake_pynvml({0: [10_000, 12_500, 20_000]}))
    meter = EnergyMeter(nvml_device=0)
    meter.start()
    assert meter.step() == pytest.approx(2.5)      # 2,500 mJ
    assert meter.step() == pytest.approx(10.0)     # + 7,500 mJ
    assert meter.gather_devices() == ["NVIDIA H100 80GB HBM3"]
    assert meter.state_dict() == {"millijoules": 10_000, "complete": True}
    meter.close()


def test_wraparound_inside_a_run(install):
    install(fake_pynvml({0: [2**64 - 1_000, 500]}))
    meter = EnergyMeter(nvml_device=0)
    meter.start()
    assert meter.step() == pytest.approx(1.5)


def test_device_without_the_counter_is_not_measured(install):
    install(fake_pynvml({0: 3}, names={0: b"Tesla P100"}))
    meter = EnergyMeter(nvml_device=0)
    meter.start()
    assert meter.step() is None
    assert "Tesla P100" in meter.reason and "NOT_SUPPORTED" in meter.reason
    assert meter.state_dict()["complete"] is False
    assert meter.gather_devices() == []


def test_nvml_init_failure_never_raises(install):
    install(fake_pynvml({}, init_error=9))   # NVML_ERROR_DRIVER_NOT_LOADED
    meter = EnergyMeter(nvml_device=0)
    meter.start()
    assert meter.step() is None
    assert meter.reason.startswith("NVML could not start")


def test_no_pynvml_installed(monkeypatch):
    def missing():
        raise ImportError("No module named 'pynvml'")
    monkeypatch.setattr(runtime_energy, "_load_pynvml", missing)
    meter = EnergyMeter(nvml_device=0)
    meter.start()
    assert meter.step() is None and "not installed" in meter.reason


def test_cpu_device_is_not_read(install):
    module = install(fake_pynvml({0: [1, 2]}))
    import torch

    meter = EnergyMeter(device=torch.device("cpu"))
    meter.start()
    assert meter.step() is None and "not an NVIDIA GPU" in meter.reason
    assert module.calls == []


def test_a_counter_failing_mid_run_stops_the_measurement(install):
    module = install(fake_pynvml({0: [100, 300]}))
    meter = EnergyMeter(nvml_device=0)
    meter.start()
    assert meter.step() == pytest.approx(0.2)
    module.nvmlDeviceGetTotalEnergyConsumption = lambda handle: (_ for _ in ()).throw(FakeNVMLError(15))
    assert meter.step() is None
    assert "could not read" in meter.reason


def test_resume_adds_the_checkpointed_energy(install):
    install(fake_pynvml({0: [0, 4_000]}))
    meter = EnergyMeter(nvml_device=0)
    meter.load_state_dict({"millijoules": 6_000, "complete": True})
    assert meter.state_dict() == {"millijoules": 6_000, "complete": True}   # before any step
    meter.start()
    assert meter.step() == pytest.approx(10.0)


def test_resume_counts_the_lost_steps_logged_reading(install):
    install(fake_pynvml({0: [0, 1_000]}))
    meter = EnergyMeter(nvml_device=0)
    meter.load_state_dict({"millijoules": 6_000, "complete": True}, lost_joules=8.0)
    meter.start()
    assert meter.step() == pytest.approx(9.0)


def test_resume_on_another_rank_leaves_the_total_to_rank_0(install, other_rank):
    install(fake_pynvml({0: [0, 1_000]}))
    ctx = TwoRanks([6_000.0 + 500.0, 0.0])   # rank 0 holds the 6,000 mJ of before, plus its 500
    ctx.rank = 1
    meter = EnergyMeter(ctx, nvml_device=0)
    meter.load_state_dict({"millijoules": 6_000, "complete": True})
    meter.start()
    assert meter.step() == pytest.approx(7.5)


@pytest.mark.parametrize("state", [None, {"millijoules": 6_000, "complete": False}])
def test_resume_after_an_unmeasured_session_is_not_measured(install, state):
    install(fake_pynvml({0: [0, 4_000]}))
    meter = EnergyMeter(nvml_device=0)
    meter.load_state_dict(state)
    meter.start()
    assert meter.step() is None and meter.reason


class TwoRanks:
    """A context of two processes whose other rank reports ``other`` = [millijoules, missing]."""

    def __init__(self, other):
        import torch

        self.enabled, self.world_size, self.device, self.other = True, 2, torch.device("cpu"), other


@pytest.fixture
def other_rank(monkeypatch):
    from distill.runtime import distributed

    def all_reduce_sum(value, ctx):
        return value + value.new_tensor(ctx.other)
    monkeypatch.setattr(distributed, "all_reduce_sum", all_reduce_sum)


def test_sums_over_ranks(install, other_rank):
    install(fake_pynvml({0: [0, 1_000]}))
    meter = EnergyMeter(TwoRanks([3_000.0, 0.0]), nvml_device=0)
    meter.start()
    assert meter.step() == pytest.approx(4.0)   # 1,000 mJ here + 3,000 mJ on the other rank


def test_one_rank_without_a_counter_makes_the_run_unmeasured(install, other_rank):
    install(fake_pynvml({0: [0, 1_000]}))
    meter = EnergyMeter(TwoRanks([0.0, 1.0]), nvml_device=0)
    meter.start()
    assert meter.step() is None
    assert meter.reason == "1 process(es) could not read an energy counter"
