"""Energy used by a run or a generation job, as the EU Model Documentation Form asks for it:
a figure, whether it was measured or estimated, and the method in words.

Units: joules (J); 1 kWh = 3.6e6 J, 1 MWh = 3.6e9 J; power in watts; accelerator-hours are
wall-clock hours x accelerators. Pure arithmetic: nothing here reads a device or a file.

* **measured**: the accelerators' own energy counters (NVML on NVIDIA GPUs,
  :mod:`distill.runtime.energy`), the deltas summed over every device of every process;
* **estimated**: accelerator-hours x board power (the plan's ``hardware.power_w``, else the
  ``board_power_w`` of ``policies/hardware.yaml`` for the accelerator the run used), an upper
  bound for the boards since it assumes full power throughout;
* **unavailable**: neither (no counter and no board power, e.g. a CPU run with no stated power).

Both figures are the accelerators' energy (``device_joules``) times a PUE (site power / IT
power: the plan's ``hardware.pue``, else the table's ``default_pue``); ``joules`` is that product,
the figure a document reports. Host CPUs, memory, network and storage are not counted apart:
the PUE covers the site's overhead, not the rest of the server.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Optional

from audit.errors import InputError
from audit.numbers import plain, sci

Status = Literal["measured", "estimated", "unavailable"]
STATUSES = ("measured", "estimated", "unavailable")
JOULES_PER_KWH = 3.6e6
JOULES_PER_MWH = 3.6e9


def kwh(joules: Optional[float]) -> Optional[float]:
    return None if joules is None else joules / JOULES_PER_KWH


def mwh(joules: Optional[float]) -> Optional[float]:
    return None if joules is None else joules / JOULES_PER_MWH


@dataclass(frozen=True)
class Energy:
    """One energy figure: ``joules`` (the accelerators' energy x ``pue``; None when unavailable),
    its ``status``, the ``method`` in words, the ``pue`` applied; the parts it came from."""

    joules: Optional[float]
    status: Status
    method: str
    pue: Optional[float]
    device_joules: Optional[float] = None     # the accelerators alone, before the PUE
    board_power_w: Optional[float] = None     # estimated: watts per accelerator
    accelerator_hours: Optional[float] = None
    devices: list[str] = field(default_factory=list)   # measured: the devices read

    @property
    def kwh(self) -> Optional[float]:
        return kwh(self.joules)

    @property
    def mwh(self) -> Optional[float]:
        return mwh(self.joules)

    def co2_grams(self, grid_gco2_per_kwh: Optional[float]) -> Optional[float]:
        """Grams of CO2-equivalent at the grid's intensity (g/kWh); None without one or without energy."""
        if grid_gco2_per_kwh is None or self.joules is None:
            return None
        return self.kwh * float(grid_gco2_per_kwh)

    def summary(self) -> str:
        """One line: ``3.9 kWh (estimated)``, MWh from 1 MWh up; ``unavailable`` otherwise."""
        if self.joules is None:
            return "unavailable"
        if self.joules >= JOULES_PER_MWH:
            return f"{plain(self.mwh, 2)} MWh ({self.status})"
        return f"{plain(self.kwh, 2)} kWh ({self.status})"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "energy") -> "Energy":
        """Read a record's ``energy`` block; ``InputError`` naming the field when it is mis-shaped."""
        if not isinstance(data, dict):
            raise InputError("expected an object with joules, status, method and pue", source=source)
        status = data.get("status")
        if status not in STATUSES:
            raise InputError(f"expected one of {', '.join(STATUSES)}, got {status!r}", source=source, field="status")
        if not isinstance(data.get("method"), str):
            raise InputError("expected the method in words", source=source, field="method")
        numbers = {}
        for name in ("joules", "pue", "device_joules", "board_power_w", "accelerator_hours"):
            value = data.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value < 0):
                raise InputError(f"expected a finite number >= 0 or null, got {value!r}", source=source, field=name)
            numbers[name] = None if value is None else float(value)
        if (numbers["joules"] is None) != (status == "unavailable"):
            raise InputError(f"status {status!r} with joules {numbers['joules']!r}: only an unavailable figure "
                             "has no joules", source=source, field="joules")
        devices = data.get("devices") or []
        if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
            raise InputError("expected a list of device names", source=source, field="devices")
        return cls(status=status, method=data["method"], devices=list(devices), **numbers)


def measured(device_joules: float, *, pue: float, pue_source: str, devices: list[str]) -> Energy:
    """The counters' sum ``device_joules`` (every device, every process) x ``pue``."""
    device_joules = float(device_joules)
    count = len(devices)
    names = ", ".join(sorted(set(devices))) or "accelerators"
    method = (f"Measured. Each accelerator's cumulative energy counter (NVIDIA NVML "
              f"nvmlDeviceGetTotalEnergyConsumption, millijoules since the driver loaded) was read by the run at "
              f"its start and after every optimizer step; the differences were summed over {count} device(s) "
              f"({names}) of every process: {plain(kwh(device_joules), 3)} kWh at the accelerator boards. "
              f"This is multiplied by a power usage effectiveness of {plain(pue, 3)} ({pue_source}) for the "
              f"site's cooling and power delivery. Host CPUs, memory, network and storage are not metered.")
    return Energy(device_joules * pue, "measured", method, float(pue), device_joules=device_joules,
                  devices=list(devices))


def estimated(accelerator_hours: float, board_power_w: float, *, power_source: str, pue: float,
              pue_source: str, reason: str) -> Energy:
    """accelerator-hours x board power (W) x 3600 s/h, x ``pue``; ``reason``: why nothing was measured."""
    device_joules = float(accelerator_hours) * float(board_power_w) * 3600.0
    method = (f"Estimated from computational resources (no energy counter was read: {reason}). "
              f"{plain(accelerator_hours, 3)} accelerator-hours (wall-clock time x accelerators) x "
              f"{plain(board_power_w, 4)} W per accelerator ({power_source}) = {plain(kwh(device_joules), 3)} kWh, "
              f"multiplied by a power usage effectiveness of {plain(pue, 3)} ({pue_source}). It assumes every "
              "accelerator drew that power for the whole run, an upper bound for the boards; host CPUs, memory, "
              "network and storage are not counted apart.")
    return Energy(device_joules * pue, "estimated", method, float(pue), device_joules=device_joules,
                  board_power_w=float(board_power_w), accelerator_hours=float(accelerator_hours))


def unavailable(reason: str) -> Energy:
    return Energy(None, "unavailable", f"Not available: {reason}.", None)


@dataclass(frozen=True)
class EnergyFigures:
    """The stated figures an energy figure uses: board power (W, or None) and PUE, with sources."""

    board_power_w: Optional[float]
    power_source: str
    pue: float
    pue_source: str


def energy_figures(plan_hardware: Optional[dict], device_name: str, device_type: str, tables) -> EnergyFigures:
    """From the audited plan's ``hardware`` block (a dict, as signed in the audit) and the
    reference tables (:class:`audit.compute.tables.ReferenceTables`). Board power: the plan's
    ``power_w``; else the table's board power for the accelerator named in ``device_name``
    (e.g. ``NVIDIA H100 80GB HBM3``); else, on an accelerator (not ``cpu``), the table's for the
    plan's ``hardware.accelerator``; else None. PUE: the plan's ``pue``, else the table's default."""
    hardware = plan_hardware or {}
    power, power_source = hardware.get("power_w"), "the plan's hardware.power_w"
    if power is None:
        entry = match_accelerator(device_name, tables)
        if entry is None and device_type != "cpu" and hardware.get("accelerator"):
            entry = tables.find_accelerator(str(hardware["accelerator"]))
        if entry is not None and entry.board_power_w is not None:
            power = entry.board_power_w
            power_source = f"board power of {entry.id}, policies/hardware.yaml: {entry.board_power_source.url}"
    if hardware.get("pue") is not None:
        pue, pue_source = float(hardware["pue"]), "the plan's hardware.pue"
    else:
        default = tables.hardware.default_pue
        pue = default.value if default is not None else 1.0
        pue_source = (f"default of policies/hardware.yaml: {default.source.note}" if default is not None
                      else "no PUE stated: 1.0")
    return EnergyFigures(None if power is None else float(power), power_source, pue, pue_source)


def match_accelerator(device_name: str, tables):
    """The table entry whose id or alias is a word of ``device_name`` (the longest such name
    wins: ``H100 NVL`` over ``H100``), or None. ``NVIDIA A100-SXM4-80GB`` -> A100."""
    def words(text: str) -> str:
        return " " + " ".join(text.upper().replace("-", " ").replace("_", " ").split()) + " "

    name_words = words(device_name)
    best, best_len = None, 0
    for entry in tables.hardware.accelerators:
        for name in (entry.id, *entry.aliases):
            key = words(name)
            if key in name_words and len(key) > best_len:
                best, best_len = entry, len(key)
    return best


def run_energy(device_joules: Optional[float], accelerator_hours: Optional[float], *, devices: list[str],
               device_name: str, device_type: str, plan_hardware: Optional[dict], tables,
               reason: str = "") -> Energy:
    """The energy of a run: measured when ``device_joules`` (the counters' sum) is given, else
    estimated from ``accelerator_hours`` when a board power is known, else unavailable.
    ``reason``: why the counters were not read (said in the method text)."""
    figures = energy_figures(plan_hardware, device_name, device_type, tables)
    if device_joules is not None:
        return measured(device_joules, pue=figures.pue, pue_source=figures.pue_source, devices=devices)
    reason = reason or "no energy counter on this device"
    if figures.board_power_w is None:
        return unavailable(f"{reason}, and no board power is known for {device_name or device_type} "
                           "(state one as the plan's hardware.power_w)")
    if accelerator_hours is None:
        return unavailable(f"{reason}, and the accelerator-hours are unknown")
    return estimated(accelerator_hours, figures.board_power_w, power_source=figures.power_source,
                     pue=figures.pue, pue_source=figures.pue_source, reason=reason)


def describe_mwh(energy: Energy) -> str:
    """The form's figure: MWh to two significant figures (``3.9e-3 MWh``), or ``unavailable``."""
    return "unavailable" if energy.joules is None else f"{sci(energy.mwh, 2)} MWh ({energy.status})"
