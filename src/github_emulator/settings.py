"""Tunable behaviour of the emulator and the world it starts with."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

DEFAULT_RUNNER_VERSION = "2.321.0"


@dataclass
class Settings:
    """Knobs that change how faithfully (or how harshly) the emulator behaves.

    All of them can be changed at run time through ``POST /_emulator/settings``.

    Attributes:
        agent_host: host name or address that runners use to reach the emulator (same port);
            ``None`` means the address the API client used.
        jit_expiry: seconds after which a JIT registration that never connected is removed.
        registration_token_ttl: lifetime of registration and remove tokens (GitHub: one hour).
        rate_limit: primary (hourly) request budget per token.
        secondary_limit: write points per token per minute (a write costs 5); 0 disables.
        write_cost: points charged per write against ``secondary_limit``.
        busy_lag: seconds after a job starts before the REST ``busy`` flag turns true.
        offline_after: seconds of agent silence after which a runner is reported offline.
        hook_timeout: seconds a webhook receiver has to answer.
        step_timeout: default per-step timeout handed to the runner app.
        poll_wait: longest time the agent long-poll for a job is held open.
        runner_version: version of the runner application listed by the downloads endpoint.
        tamper_checksum: list a wrong ``sha256_checksum`` for the runner application.
        request_log_size: number of requests kept in ``/_emulator/stats``.
    """

    agent_host: str | None = None
    jit_expiry: float = 3600.0
    registration_token_ttl: float = 3600.0
    rate_limit: int = 5000
    secondary_limit: int = 900
    write_cost: int = 5
    busy_lag: float = 0.0
    offline_after: float = 10.0
    hook_timeout: float = 10.0
    step_timeout: float = 600.0
    poll_wait: float = 5.0
    runner_version: str = DEFAULT_RUNNER_VERSION
    tamper_checksum: bool = False
    request_log_size: int = 1000

    def update(self, values: dict[str, Any]) -> list[str]:
        """Apply known fields from ``values``; returns the names of unknown ones."""
        known = {f.name: f for f in dataclasses.fields(self)}
        unknown = [name for name in values if name not in known]
        for name, value in values.items():
            if name not in known:
                continue
            current = getattr(self, name)
            if value is None or isinstance(current, str) or current is None:
                setattr(self, name, value)
            elif isinstance(current, bool):
                setattr(self, name, bool(value))
            elif isinstance(current, int):
                setattr(self, name, int(value))
            elif isinstance(current, float):
                setattr(self, name, float(value))
            else:
                setattr(self, name, value)
        return unknown

    def as_dict(self) -> dict[str, Any]:
        """Plain-data view, for the control API."""
        return dataclasses.asdict(self)


@dataclass
class Seed:
    """Orgs, repositories, enterprises, tokens and hooks present at start-up (and after a reset).

    ``tokens`` maps a token to its grants; ``None`` grants everything declared in the seed,
    which is what ``--token`` on the command line means.
    """

    orgs: list[str] = field(default_factory=list)
    repos: list[str] = field(default_factory=list)
    enterprises: list[str] = field(default_factory=list)
    tokens: dict[str, dict[str, list[str]] | None] = field(default_factory=dict)
    hooks: list[dict[str, Any]] = field(default_factory=list)
