"""``python -m github_emulator``: serve a local GitHub until SIGTERM/SIGINT.

``--print-url`` prints the base URL as the first line of stdout (flushed) once it is listening.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from github_emulator.app import Emulator
from github_emulator.server import EmulatorServer
from github_emulator.settings import DEFAULT_RUNNER_VERSION, Seed, Settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="github-emulator", description="A local GitHub for self-hosted runner managers."
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all)"
    )
    parser.add_argument("--port", type=int, default=0, help="port (0 picks a free one)")
    parser.add_argument("--print-url", action="store_true", help="print the base URL on stdout")
    parser.add_argument("--org", action="append", default=[], help="declare an org (repeatable)")
    parser.add_argument(
        "--repo", action="append", default=[], help="declare owner/name (repeatable)"
    )
    parser.add_argument("--enterprise", action="append", default=[], help="declare an enterprise")
    parser.add_argument(
        "--token",
        action="append",
        default=[],
        help="a token with access to every org, repo and enterprise given here (repeatable)",
    )
    parser.add_argument("--hook-url", action="append", default=[], help="workflow_job webhook URL")
    parser.add_argument(
        "--hook-secret",
        action="append",
        default=[],
        help="secret for the --hook-url at the same position",
    )
    parser.add_argument("--agent-host", default=None, help="host runners use to reach this server")
    parser.add_argument(
        "--jit-expiry", type=float, default=3600.0, help="seconds an unused JIT lives"
    )
    parser.add_argument(
        "--rate-limit", type=int, default=5000, help="hourly request budget per token"
    )
    parser.add_argument(
        "--secondary-limit",
        type=int,
        default=900,
        help="write points per token per minute (0: off)",
    )
    parser.add_argument(
        "--busy-lag", type=float, default=0.0, help="seconds the REST busy flag lags"
    )
    parser.add_argument("--offline-after", type=float, default=10.0, help="agent silence → offline")
    parser.add_argument("--runner-version", default=DEFAULT_RUNNER_VERSION)
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def _hooks(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One org hook per declared org, and repo hooks for repos outside those orgs."""
    hooks = []
    orgs = {o.lower() for o in args.org}
    for i, url in enumerate(args.hook_url):
        secret = (
            args.hook_secret[i]
            if i < len(args.hook_secret)
            else (args.hook_secret[-1] if args.hook_secret else None)
        )
        for org in args.org:
            hooks.append({"url": url, "secret": secret, "org": org})
        for repo in args.repo:
            if repo.split("/", 1)[0].lower() not in orgs:
                hooks.append({"url": url, "secret": secret, "repo": repo})
    return hooks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    for repo in args.repo:
        if repo.count("/") != 1 or not all(repo.split("/")):
            print(f"--repo {repo!r}: expected owner/name", file=sys.stderr)
            return 2
    settings = Settings(
        agent_host=args.agent_host,
        jit_expiry=args.jit_expiry,
        rate_limit=args.rate_limit,
        secondary_limit=args.secondary_limit,
        busy_lag=args.busy_lag,
        offline_after=args.offline_after,
        runner_version=args.runner_version,
    )
    seed = Seed(
        orgs=args.org,
        repos=args.repo,
        enterprises=args.enterprise,
        tokens={t: None for t in args.token},
        hooks=_hooks(args),
    )
    server = EmulatorServer(Emulator(settings, seed), args.host, args.port)
    done = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    if args.print_url:
        print(server.url, flush=True)
    while not done.wait(1.0):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
