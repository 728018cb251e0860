"""The simulated market's settings (SIM_*), read by the publisher's `simulate` and by the
service when it runs the market itself (no REDIS_URL)."""

from __future__ import annotations

from dataclasses import dataclass

from quote_runtime.settings import POSITIVE, SettingsGroup, non_negative, setting


@dataclass(frozen=True)
class SimulationSettings(SettingsGroup):
    # Quotes per second; the daily band (±SIM_BAND_PCT% of the previous close, at least
    # SIM_BAND_MIN rupees); the seed of a repeatable day (None: random).
    sim_rate: float = setting(20.0, POSITIVE)
    sim_band_pct: float = setting(10.0, non_negative())
    sim_band_min: float = setting(1.0, non_negative())
    sim_seed: int | None = None
