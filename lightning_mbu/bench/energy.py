"""GPU energy over a timed region, from NVML.

Prefers the card's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``,
millijoules since driver load, Volta and newer); where that is not supported, a
thread samples the power draw and integrates it. Where NVML itself is missing
(no ``nvidia-ml-py``, no driver, a CPU machine), energy is ``None``, never an error:
a benchmark without a power reading is still a benchmark.
"""

from __future__ import annotations

import threading
import time
from importlib import import_module


def _nvml():
    """The pynvml module, initialised, or None where NVML cannot be used here."""
    try:
        pynvml = import_module("pynvml")  # from nvidia-ml-py, imported only when energy is asked for
        pynvml.nvmlInit()
    except Exception:  # ImportError, or NVMLError of any kind (no driver, no library)
        return None
    return pynvml


def nvml_handle(pynvml, device_index: int = 0, uuid: str | None = None):
    """NVML's handle of the GPU that torch calls ``device_index`` (matched by UUID where given)."""
    if uuid:
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        except Exception:
            pass  # a UUID NVML does not know: fall back to the index
    return pynvml.nvmlDeviceGetHandleByIndex(device_index)


class EnergyMeter:
    """``start()`` ... ``stop()`` gives joules (or None); ``method`` says how they were read.

    >>> meter = EnergyMeter(0); meter.start(); run(); torch.cuda.synchronize(); joules = meter.stop()
    """

    def __init__(self, device_index: int = 0, uuid: str | None = None, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.method: str | None = None
        self._pynvml = _nvml()
        self._handle = None
        if self._pynvml is not None:
            try:
                self._handle = nvml_handle(self._pynvml, device_index, uuid)
                self._pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
                self.method = "nvml-energy-counter"
            except Exception:
                self.method = self._probe_power()

    def _probe_power(self) -> str | None:
        try:
            self._pynvml.nvmlDeviceGetPowerUsage(self._handle)
        except Exception:
            return None
        return "nvml-power-sampling"

    @property
    def supported(self) -> bool:
        return self.method is not None

    def start(self) -> None:
        if self.method == "nvml-energy-counter":
            self._e0 = self._pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        elif self.method == "nvml-power-sampling":
            self._samples: list[tuple[float, float]] = []
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        while True:
            watts = self._pynvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0  # mW -> W
            self._samples.append((time.perf_counter(), watts))
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> float | None:
        """Joules used since ``start()``; call after synchronising the device."""
        if self.method == "nvml-energy-counter":
            return (self._pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) - self._e0) / 1000.0
        if self.method == "nvml-power-sampling":
            self._stop.set()
            self._thread.join()
            return integrate_power(self._samples)
        return None


def integrate_power(samples: list[tuple[float, float]]) -> float | None:
    """Trapezoid integral of (seconds, watts) samples, in joules; None with fewer than two."""
    if len(samples) < 2:
        return None
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(samples, samples[1:]))


def driver_version() -> str | None:
    pynvml = _nvml()
    if pynvml is None:
        return None
    try:
        version = pynvml.nvmlSystemGetDriverVersion()
    except Exception:
        return None
    return version.decode() if isinstance(version, bytes) else str(version)
