"""The accelerators' energy counters, read through NVML (``nvidia-ml-py``, module ``pynvml``).

Each process reads the counter of its own GPU (``nvmlDeviceGetTotalEnergyConsumption``:
millijoules since the driver loaded, Volta and newer) when the meter starts and after every
optimizer step, and adds the differences; :meth:`EnergyMeter.step` sums them over ranks, as the
compute meter sums tokens. Units: joules.

A counter that goes backwards was reset (the driver reloaded: the new reading is the energy
since) or, from near the top of its 64 bits, wrapped (the difference is taken modulo 2^64).
Whatever stops a reading -- ``pynvml`` not installed, NVML failing to start (no driver: CPU),
a device without the counter (``NVML_ERROR_NOT_SUPPORTED``: pre-Volta, MIG slices), a CPU
process -- never stops the run: the meter says the energy was not measured and why, and the run
record estimates it instead (:func:`audit.energy.run_energy`). One such process makes the whole
run "not measured": a sum over part of the devices would under-state it.
"""

from __future__ import annotations

import os
from typing import Optional

COUNTER_BITS = 64
_WRAP = 1 << COUNTER_BITS


def counter_delta(previous: int, current: int) -> int:
    """Millijoules between two readings of one counter (see the module docstring)."""
    if current >= previous:
        return current - previous
    if previous >= _WRAP // 2:       # wrapped past 2^64
        return current + _WRAP - previous
    return current                   # reset to 0 (driver reload): what it counted since


def _load_pynvml():
    import pynvml  # nvidia-ml-py; imported only when a meter starts

    return pynvml


class EnergyMeter:
    """This process's accelerator energy, summed over ranks at each step.

    ``ctx``: a :class:`distill.runtime.distributed.DistContext` (or None: one process);
    ``device``: the torch device this process trains on; ``nvml_device``: the NVML device to read
    (an index or a ``GPU-...`` UUID), found from ``device`` when not given."""

    def __init__(self, ctx=None, device=None, *, nvml_device=None):
        self.ctx, self.device, self.nvml_device = ctx, device, nvml_device
        self.before_mj = 0          # this rank's millijoules from earlier sessions (resume)
        self.local_mj = 0           # this rank's millijoules in this session
        self.incomplete_before = False
        self._global_mj, self._global_complete = 0, True   # as of the last step (checkpointed)
        self.joules: Optional[float] = None   # all ranks, all sessions; None when any was not measured
        self.reason = ""            # why not measured (this rank's reason, or another rank's count)
        self.devices: list[str] = []
        self.name: Optional[str] = None   # this process's GPU, as NVML names it
        self._nvml = self._handle = self._last = None

    # --- this process -----------------------------------------------------------------------
    def start(self) -> None:
        """Open NVML and take the first reading (never raises: a failure is kept as the reason)."""
        target = self.nvml_device if self.nvml_device is not None else _nvml_target(self.device)
        if target is None:
            on_gpu = getattr(self.device, "type", None) == "cuda"
            self.reason = (f"{self.device} could not be matched to an NVML device" if on_gpu
                           else f"the run's device ({self.device or 'cpu'}) is not an NVIDIA GPU")
            return
        try:
            nvml = _load_pynvml()
        except ImportError:
            self.reason = "nvidia-ml-py (pynvml) is not installed"
            return
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError (no driver, no GPU) or a broken library
            self.reason = f"NVML could not start ({_nvml_error(exc)})"
            return
        self._nvml = nvml
        try:
            self._handle = (nvml.nvmlDeviceGetHandleByUUID(target) if isinstance(target, str)
                            else nvml.nvmlDeviceGetHandleByIndex(int(target)))
            self.name = _text(nvml.nvmlDeviceGetName(self._handle))
            self._last = int(nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        code = getattr(exc, "value", None)
        not_supported = getattr(self._nvml, "NVML_ERROR_NOT_SUPPORTED", 3)
        name = self.name or "this GPU"
        self.reason = (f"{name} has no energy counter (NVML_ERROR_NOT_SUPPORTED)" if code == not_supported
                       else f"NVML could not read the energy counter ({_nvml_error(exc)})")
        self._last = None

    def read_local(self) -> None:
        """Add this process's millijoules since the last reading."""
        if self._last is None:
            return
        try:
            current = int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except Exception as exc:
            self._fail(exc)
            return
        self.local_mj += counter_delta(self._last, current)
        self._last = current

    @property
    def measuring(self) -> bool:
        """This process's counter is being read, and was in every earlier session."""
        return self._last is not None and not self.incomplete_before

    # --- all ranks ----------------------------------------------------------------------------
    def step(self) -> Optional[float]:
        """Read this process's counter and sum over ranks (all ranks call it together): the
        run's joules so far, or None when some process is not measured."""
        self.read_local()
        mj = float(self.before_mj + self.local_mj)
        missing = 0 if self.measuring else 1
        if self.ctx is not None and self.ctx.enabled:
            import torch

            from distill.runtime.distributed import all_reduce_sum

            summed = all_reduce_sum(torch.tensor([mj, float(missing)], dtype=torch.float64,
                                                 device=self.ctx.device), self.ctx)
            mj, missing = float(summed[0]), int(summed[1])
        self._global_mj, self._global_complete = mj, not missing
        if missing:
            if self.measuring:
                self.reason = f"{missing} process(es) could not read an energy counter"
            self.joules = None
        else:
            self.joules = mj / 1000.0
        return self.joules

    def gather_devices(self) -> list[str]:
        """The device names of every rank (all ranks call it together), kept in ``devices``."""
        name = self.name if self._last is not None else None
        if self.ctx is not None and self.ctx.enabled:
            from distill.runtime.distributed import gather_objects

            names = gather_objects(name, self.ctx)
        else:
            names = [name]
        self.devices = [n for n in names if n]
        return self.devices

    # --- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The run's millijoules so far (all ranks, as of the last :meth:`step`) and whether all
        of it was measured: the same on every rank, so the checkpoint's copy holds for all."""
        return {"millijoules": int(self._global_mj), "complete": bool(self._global_complete)}

    def load_state_dict(self, state: Optional[dict], *, lost_joules: Optional[float] = None) -> None:
        """Continue from a checkpoint's state (None: a checkpoint from before energy was metered,
        whose energy is unknown). ``lost_joules``: the last reading logged by steps after the
        checkpoint (lost to the interruption, but they ran): counted when larger. The total goes
        to rank 0's share, so the sum over ranks counts it once."""
        if not state or not state.get("complete", False):
            self.incomplete_before = True
            self._global_complete = False
            self.reason = ("the run resumed from a checkpoint with no energy reading" if not state
                           else "an earlier session of the run could not read an energy counter")
            return
        total = max(int(state.get("millijoules", 0)), int((lost_joules or 0.0) * 1000))
        self._global_mj = total
        self.before_mj = total if self.ctx is None or getattr(self.ctx, "rank", 0) == 0 else 0

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001 - shutting down a library that failed is not the run's concern
                pass
            self._nvml = None


def _nvml_target(device):
    """The NVML identifier of a torch CUDA device: its UUID (``GPU-...``), which holds whatever
    ``CUDA_VISIBLE_DEVICES`` renumbered; else its index when nothing was renumbered; None for a
    CPU device."""
    if device is None or getattr(device, "type", str(device)) != "cuda":
        return None
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    if uuid is not None:
        text = str(uuid)
        return text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"
    return index if not os.environ.get("CUDA_VISIBLE_DEVICES") else None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml_error(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__
