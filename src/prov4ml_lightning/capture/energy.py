"""Energy and emissions of a run from CodeCarbon (the optional ``energy`` extra), offline.

One :class:`CarbonTracker` per run: CodeCarbon's ``OfflineEmissionsTracker`` (no network: the
carbon intensity comes from its bundled per-country table) started at the first
``log_carbon_metrics`` call, read at each call, stopped when the run ends. Without CodeCarbon the
first call warns once and every call records nothing.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from prov4ml_lightning.errors import Prov4MLWarning, warn

__all__ = ["CARBON_FIELDS", "DEFAULT_COUNTRY", "CarbonTracker"]

log = logging.getLogger(__name__)

#: CodeCarbon's fields logged as metrics (units: kg CO2eq, kg/s, W, kWh)
CARBON_FIELDS = ("emissions", "emissions_rate", "cpu_power", "gpu_power", "ram_power",
                 "cpu_energy", "gpu_energy", "ram_energy", "energy_consumed")
#: ISO 3166 alpha-3 country of the carbon intensity used, unless PROV4ML_CARBON_COUNTRY says otherwise
DEFAULT_COUNTRY = "USA"

_missing_warned = False


class CarbonTracker:
    """CodeCarbon's offline tracker for one run; :meth:`read` returns the totals so far."""

    def __init__(self, output_dir: str | os.PathLike[str]) -> None:
        self.output_dir = str(output_dir)
        self.country = os.environ.get("PROV4ML_CARBON_COUNTRY", DEFAULT_COUNTRY)
        self._tracker: Any = None
        self._lock = threading.Lock()
        self._failed = False

    def read(self) -> dict[str, float]:
        """Start the tracker on first use; the energy, emissions and power so far (``{}`` without CodeCarbon)."""
        global _missing_warned
        with self._lock:
            if self._failed:
                return {}
            if self._tracker is None:
                try:
                    from codecarbon import OfflineEmissionsTracker
                except ImportError:
                    if not _missing_warned:
                        _missing_warned = True
                        warn("log_carbon_metrics: CodeCarbon is not installed, so no energy or emissions "
                             "are recorded; install the extra: pip install 'prov4ml-lightning[energy]'",
                             Prov4MLWarning)
                    self._failed = True
                    return {}
                try:
                    self._tracker = OfflineEmissionsTracker(
                        country_iso_code=self.country, save_to_file=False, output_dir=self.output_dir,
                        log_level="error", allow_multiple_runs=True, measure_power_secs=15,
                    )
                    self._tracker.start()
                except Exception as err:
                    self._failed = True
                    warn(f"log_carbon_metrics: CodeCarbon could not start ({err!r}); no energy is recorded",
                         Prov4MLWarning)
                    return {}
            try:
                self._tracker.flush()
                data = self._tracker._prepare_emissions_data()  # the totals flush() computed; no public getter
            except Exception as err:
                log.warning("prov4ml: CodeCarbon could not be read (%r)", err)
                return {}
            return {field: float(getattr(data, field, 0.0) or 0.0) for field in CARBON_FIELDS}

    def stop(self) -> None:
        with self._lock:
            if self._tracker is not None:
                try:
                    self._tracker.stop()
                except Exception as err:
                    log.warning("prov4ml: CodeCarbon could not be stopped (%r)", err)
                self._tracker = None
