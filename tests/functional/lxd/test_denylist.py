"""The denylist as an LXD network ACL: a container cannot reach a denied address, still reaches others.

The only addresses involved are the bridge's own address and a second address this test adds to
lxdbr0; the TCP listeners run here on the host. Nothing else is ever contacted.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from github_runner_manager.backends.lxd import LXDBackend
from tests.functional.lxd.lxdtools import LXDInfo, RunnerImage, launch, lxc, lxc_exec, wait_ipv4

pytestmark = pytest.mark.needs_lxd

PROBE = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()\n"
    "except OSError as exc:\n"
    "    print(type(exc).__name__, exc)\n"
    "    sys.exit(1)\n"
    "print('connected')\n"
)


class Listener:
    """A TCP listener on one host address that counts accepted connections."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def _on_bridge(bridge: str) -> list[str]:
    shown = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", bridge],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return [line.split()[3].split("/")[0] for line in shown.stdout.splitlines()]


@contextmanager
def second_address(lxd: LXDInfo) -> Iterator[str]:
    """An extra /32 on lxdbr0 owned by this test (removed afterwards).

    LXD flushes the bridge's addresses whenever the bridge's own config changes (attaching or
    detaching an ACL does), so the address is added after the ACL is attached.
    """
    address = str(lxd.interface.network.network_address + 200)
    instances = json.loads(lxc("query", "/1.0/instances?recursion=2").stdout)
    for instance in instances:
        for nic in ((instance.get("state") or {}).get("network") or {}).values():
            assert address not in [a["address"] for a in nic.get("addresses", [])], (
                f"{address} in use"
            )
    subprocess.run(
        ["ip", "addr", "add", f"{address}/32", "dev", lxd.bridge], check=True, timeout=30
    )
    try:
        yield address
    finally:
        subprocess.run(
            ["ip", "addr", "del", f"{address}/32", "dev", lxd.bridge],
            capture_output=True,
            check=False,
            timeout=30,
        )


def test_denied_address_is_unreachable_allowed_one_is_not(
    lxd: LXDInfo, runner_image: RunnerImage, launched: list[str]
) -> None:
    backend = LXDBackend({"denylist_acl": f"ghrmt-deny-{uuid.uuid4().hex[:6]}"}, prefix="ghrmt")
    name = launch(runner_image.alias, launched, tag="deny")
    wait_ipv4(name)

    def probe(address: str, port: int) -> subprocess.CompletedProcess[str]:
        return lxc_exec(name, "python3", "-c", PROBE, address, str(port), timeout=30)

    try:
        backend.apply_denylist([])  # attached, no rules yet (this re-applies the bridge's config)
        network = json.loads(lxc("query", f"/1.0/networks/{lxd.bridge}").stdout)["config"]
        assert backend.lxd_settings.denylist_acl in network["security.acls"].split(",")
        assert network["security.acls.default.egress.action"] == "allow"
        assert network["security.acls.default.ingress.action"] == "allow"
        wait_ipv4(name)
        with second_address(lxd) as denied_address:
            allowed = Listener(lxd.address)
            denied = Listener(denied_address)
            try:
                # Both reachable with the ACL attached but empty: what blocks later is the rule.
                assert probe(lxd.address, allowed.port).returncode == 0
                assert probe(denied_address, denied.port).returncode == 0
                before = denied.accepted

                backend.apply_denylist([ipaddress.ip_network(f"{denied_address}/32")])
                backend.apply_denylist([f"{denied_address}/32"])  # idempotent
                acl = json.loads(
                    lxc("query", f"/1.0/network-acls/{backend.lxd_settings.denylist_acl}").stdout
                )
                assert [(r["action"], r["destination"]) for r in acl["egress"]] == [
                    ("reject", f"{denied_address}/32")
                ]

                blocked = probe(denied_address, denied.port)
                assert blocked.returncode == 1, blocked.stdout
                assert denied.accepted == before
                assert denied_address in _on_bridge(lxd.bridge)  # still there: the ACL blocked it
                ok = probe(lxd.address, allowed.port)
                assert ok.returncode == 0 and "connected" in ok.stdout
                # curl too (the job's usual tool): 7 = could not connect, 28 = timed out.
                curl = lxc_exec(
                    name, "curl", "-s", "--max-time", "5", f"http://{denied_address}:{denied.port}/"
                )
                assert curl.returncode in (7, 28), curl
                assert denied.accepted == before

                backend.apply_denylist([])  # no rules: reachable again
                assert probe(denied_address, denied.port).returncode == 0
                assert denied.accepted == before + 1
            finally:
                allowed.close()
                denied.close()
    finally:
        backend.remove_denylist()
        backend.close()
    network = json.loads(lxc("query", f"/1.0/networks/{lxd.bridge}").stdout)["config"]
    assert backend.lxd_settings.denylist_acl not in network.get("security.acls", "")
    assert (
        lxc("network", "acl", "show", backend.lxd_settings.denylist_acl, check=False).returncode
        != 0
    )
