"""A generation job's energy (distill.generation.meter.job_energy): API, measured, resumed, estimated."""

import pytest

from audit.compute.tables import load_reference_tables
from distill.generation.meter import job_energy

LOCAL = {"engine": "vllm", "weights_sha256": "ab" * 32}


def energy(**kwargs):
    fields = dict(teacher=LOCAL, session_joules=None, sessions=1, reason="", wall_time_s=7200.0,
                  device_name="NVIDIA H100 80GB HBM3", device_type="cuda", plan_hardware=None,
                  tables=load_reference_tables())
    return job_energy(**{**fields, **kwargs})


def test_an_api_teacher_is_the_providers_to_report():
    block = energy(teacher={"endpoint_host": "api.example.com"}, session_joules=5.0)
    assert block["status"] == "unavailable" and "api.example.com" in block["method"]


def test_a_local_teachers_counter_is_measured():
    block = energy(session_joules=3.6e6, plan_hardware={"pue": 1.2})
    assert block["status"] == "measured" and block["joules"] == pytest.approx(3.6e6 * 1.2)


def test_a_resumed_job_is_estimated_from_its_whole_wall_time():
    block = energy(session_joules=1.0e6, sessions=2, plan_hardware={"pue": 1.0})
    # 2 h on one accelerator x 700 W (H100-SXM in the table) = 1.4 kWh
    assert block["status"] == "estimated" and block["device_joules"] == pytest.approx(2 * 700 * 3600)
    assert "earlier sessions" in block["method"]
