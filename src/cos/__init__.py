# Copyright 2025 the github-runner authors.
# See LICENSE file for licensing details.

"""What the charm tells the COS agent (grafana-agent / opentelemetry-collector subordinate).

The `cos_agent` interface's provider library (`charms.grafana_agent.v0.cos_agent`) is a Charmhub
library, not a PyPI package, so this module writes the unit databag itself in the library's
documented format: one key, `config`, holding JSON with

* `metrics_scrape_jobs`: Prometheus scrape configs (the manager's endpoint on loopback);
* `metrics_alert_rules` / `log_alert_rules`: `{"groups": [...]}` with the Juju topology injected
  into every expression (`%%juju_topology%%` in the rule files) and added to every rule's labels;
* `dashboards`: each Grafana dashboard JSON, lzma-compressed and base64-encoded;
* `log_slots`: snap log slots (none: the manager logs to files the agent collects).

The rule files and the dashboard live next to this module: `prometheus_alert_rules/`,
`loki_alert_rules/` and `grafana_dashboards/`.
"""

from __future__ import annotations

import base64
import lzma
from pathlib import Path
from typing import Any

import yaml

DATABAG_KEY = "config"
HERE = Path(__file__).resolve().parent
PROMETHEUS_RULES_DIR = HERE / "prometheus_alert_rules"
LOKI_RULES_DIR = HERE / "loki_alert_rules"
DASHBOARDS_DIR = HERE / "grafana_dashboards"
_TOPOLOGY_MARK = "%%juju_topology%%"


def encode_dashboard(raw: bytes) -> str:
    """A dashboard as the cos_agent interface carries it: lzma, then base64."""
    return base64.b64encode(lzma.compress(raw)).decode()


def decode_dashboard(encoded: str) -> bytes:
    """The inverse of `encode_dashboard` (for tests and debugging)."""
    return lzma.decompress(base64.b64decode(encoded))


def alert_rules(directory: Path, topology: dict[str, str]) -> dict[str, Any]:
    """Every rule group of the `*.rules` files in `directory`, with the topology injected.

    Group names get the topology identifier (`model_uuid_app`) in front, as the cos libraries do,
    so groups of several applications never collide.
    """
    identifier = "_".join(
        (topology["juju_model"], topology["juju_model_uuid"][:8], topology["juju_application"])
    )
    matchers = ",".join(f'{key}="{value}"' for key, value in topology.items())
    groups: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.rules")):
        document = yaml.safe_load(path.read_text()) or {}
        for group in document.get("groups", []):
            rules = []
            for rule in group.get("rules", []):
                rule = dict(rule)
                rule["expr"] = str(rule["expr"]).replace(_TOPOLOGY_MARK, matchers)
                rule["labels"] = {**rule.get("labels", {}), **topology}
                rules.append(rule)
            groups.append({"name": f"{identifier}_{group['name']}_alerts", "rules": rules})
    return {"groups": groups}


def cos_agent_data(*, app: str, model: str, model_uuid: str, metrics_port: int) -> dict[str, Any]:
    """The `config` value of the `cos-agent` unit databag (before JSON encoding).

    The agent adds `juju_unit` (and the rest of the topology) to what it scrapes and forwards.
    """
    topology = {
        "juju_model": model,
        "juju_model_uuid": model_uuid,
        "juju_application": app,
    }
    return {
        "metrics_alert_rules": alert_rules(PROMETHEUS_RULES_DIR, topology),
        "log_alert_rules": alert_rules(LOKI_RULES_DIR, topology),
        "dashboards": [
            encode_dashboard(path.read_bytes()) for path in sorted(DASHBOARDS_DIR.glob("*.json"))
        ],
        "metrics_scrape_jobs": [
            {
                "job_name": f"{app}_0_github-runner-manager",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"localhost:{metrics_port}"]}],
            }
        ],
        "log_slots": [],
    }
