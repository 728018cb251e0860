"""The publisher's settings: the Redis names it shares with the service, the simulated
market, the logs, and its own heartbeat (docs/configuration.md)."""

from __future__ import annotations

from dataclasses import dataclass

from quote_bus.settings import RedisSettings
from quote_runtime.logs import LogSettings
from quote_runtime.settings import POSITIVE, setting
from quote_sim.settings import SimulationSettings


@dataclass(frozen=True)
class Settings(RedisSettings, SimulationSettings, LogSettings):
    # The publisher says it is alive (`[]` on every partition's channel) this often, even
    # when no quote moves.
    publisher_heartbeat_s: float = setting(1.0, POSITIVE)
