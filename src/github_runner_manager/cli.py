"""``github-runner-manager``: the standalone front end of the runner manager (typer + rich).

Every command reads ``--config FILE`` (or ``$GITHUB_RUNNER_MANAGER_CONFIG``). Errors an operator can
act on end the command with one line on stderr, never a traceback:

* exit 2 -- the configuration or credentials must be fixed (bad config with the key path, missing
  token, GitHub rejecting the token, a backend's settings or credentials, a missing backend library);
* exit 1 -- something outside is unavailable or failed (Redis, GitHub, a backend, a download, a build);
* exit 130 -- interrupted.

``--log-level debug`` adds the traceback of unexpected errors to the log.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import click
import typer

from github_runner_manager.backends.base import (
    AuthError,
    BackendConfigError,
    BackendError,
    MissingDependencyError,
)
from github_runner_manager.config import ConfigError, ManagerConfig, dump_config, load_config
from github_runner_manager.github import GitHubAuthError, GitHubError
from github_runner_manager.store import StoreUnavailable

PROG = "github-runner-manager"
logger = logging.getLogger("github_runner_manager.cli")


class LogLevel(str, Enum):
    """Log levels accepted by ``--log-level``."""

    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


@dataclass
class _Options:
    config: Path
    log_level: LogLevel | None


app = typer.Typer(
    name=PROG,
    help=(
        "Keep fleets of ephemeral GitHub Actions self-hosted runners alive on LXD, Docker, AWS, GCP, "
        "OpenStack, vSphere (or the fake backend), from one YAML config file.\n\n"
        "Start the service with `run`; `status` shows each runner group; `reconcile` and `flush` act once."
    ),
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            envvar="GITHUB_RUNNER_MANAGER_CONFIG",
            help="The manager's YAML config file (see docs; `dumpconfig` shows the effective one). "
            "Required, except by `demo`.",
            show_envvar=True,
        ),
    ] = None,
    log_level: Annotated[
        LogLevel | None,
        typer.Option(
            "--log-level",
            case_sensitive=False,
            help="Logging detail on stderr [default: info for run, warning otherwise].",
        ),
    ] = None,
) -> None:
    if config is None and ctx.invoked_subcommand != "demo":  # the demo brings its own configuration
        raise click.UsageError(
            "Missing option '--config' / '-c' (env var: 'GITHUB_RUNNER_MANAGER_CONFIG').",
            ctx,  # type: ignore[arg-type]  # typer's Context is its vendored click's
        )
    ctx.obj = _Options(config=config or Path(), log_level=log_level)


def _setup_logging(options: _Options, default: LogLevel) -> None:
    level = (options.log_level or default).value.upper()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def _config(ctx: typer.Context, default_level: LogLevel = LogLevel.warning) -> ManagerConfig:
    options: _Options = ctx.obj
    _setup_logging(options, default_level)
    return load_config(options.config)


def _manager(ctx: typer.Context, default_level: LogLevel = LogLevel.warning) -> Any:
    from github_runner_manager.manager import RunnerManager

    cfg = _config(ctx, default_level)
    options: _Options = ctx.obj
    return RunnerManager(cfg, config_path=options.config.resolve())


def _echo(text: str) -> None:
    typer.echo(text.rstrip("\n"))


# ----------------------------------------------------------------------------------- commands
@app.command()
def run(ctx: typer.Context) -> None:
    """Run the service: webhook endpoint, job consumers, reconcile loop, poll for missed webhooks.

    Stops cleanly on SIGTERM or SIGINT; runners keep running and are found again on the next start.
    SIGUSR1 writes every thread's stack to stderr (for a manager that seems stuck).
    """
    manager = _manager(ctx, LogLevel.info)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %s received; stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:  # `kill -USR1 PID` dumps every thread's stack (needs a real stderr)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        dumps = True
    except (OSError, ValueError):
        dumps = False
    try:
        manager.serve(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if dumps:
            faulthandler.unregister(signal.SIGUSR1)
        manager.close()


@app.command()
def reconcile(
    ctx: typer.Context,
    quantity: Annotated[
        int | None,
        typer.Option(
            help="Idle runners wanted per group (overrides min_idle and pending jobs).", min=0
        ),
    ] = None,
) -> None:
    """Converge this unit's fleet once; prints intended minus actual runners and the group table."""
    manager = _manager(ctx)
    try:
        delta = manager.reconcile(quantity=quantity)
        _echo(
            f"reconciled unit {manager.unit}: {delta:+d} runners (intended - actual before this pass)"
        )
        _echo(manager.info())
    finally:
        manager.close()


@app.command()
def flush(
    ctx: typer.Context,
    busy: Annotated[
        bool, typer.Option("--busy", help="Also remove runners that are running a job.")
    ] = False,
) -> None:
    """Remove this unit's runners (idle ones; with --busy all of them), and any orphans."""
    manager = _manager(ctx)
    try:
        removed = manager.flush(flush_busy=busy)
        _echo(f"flushed unit {manager.unit}: {removed} runner{'s' if removed != 1 else ''} removed")
    finally:
        manager.close()


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] = False,
) -> None:
    """Per runner group: idle, busy, creating, queued jobs, pickup p50/p95; and GitHub calls spent."""
    manager = _manager(ctx)
    try:
        if as_json:
            stats = {name: s.as_dict() for name, s in manager.statistics().items()}
            payload = {
                "unit": manager.unit,
                "groups": stats,
                "create_backoffs": manager.create_backoffs(),
                "runners_removed": manager.removals(),
            }
            _echo(json.dumps(payload, indent=2))
        else:
            _echo(manager.info())
    finally:
        manager.close()


@app.command()
def dumpconfig(ctx: typer.Context) -> None:
    """Print the effective configuration (defaults filled in, secrets shown as **********)."""
    _echo(dump_config(_config(ctx)))


@app.command("update-runner-bin")
def update_runner_bin(
    ctx: typer.Context,
    check: Annotated[
        bool, typer.Option("--check", help="Only say whether a newer version exists.")
    ] = False,
) -> None:
    """Download the latest runner application (sha256-verified) into the manager's cache."""
    manager = _manager(ctx)
    try:
        if check:
            newer = manager.check_runner_bin()
            latest = manager.get_latest_runner_bin_url()
            _echo(
                f"latest runner {latest.version}: {'update available' if newer else 'up to date'}"
            )
            return
        binary = manager.update_runner_bin()
        _echo(
            f"runner {binary.version} ({binary.os}/{binary.arch}) sha256 {binary.sha256[:12]}... at {binary.path}"
        )
    finally:
        manager.close()


@app.command("build-image")
def build_image(
    ctx: typer.Context,
    schedule: Annotated[
        int | None,
        typer.Option(
            help="Install a cron entry rebuilding every N hours instead of building now.", min=1
        ),
    ] = None,
) -> None:
    """Build the runner image with the cached runner application baked in (or schedule rebuilds)."""
    manager = _manager(ctx, LogLevel.info)
    try:
        if schedule is not None:
            path = manager.schedule_build_runner_image(schedule)
            _echo(f"image rebuild scheduled every {schedule}h: {path}")
            return
        result = manager.build_runner_image()
        _echo(
            f"image {result.alias or '-'} built in {result.seconds:.0f}s (cached: {result.cached})"
        )
    finally:
        manager.close()


class DemoBackend(str, Enum):
    """Backends ``demo`` accepts."""

    auto = "auto"
    lxd = "lxd"
    docker = "docker"
    local = "local"


@app.command()
def demo(
    ctx: typer.Context,
    jobs: Annotated[
        int, typer.Option("--jobs", "-n", min=1, max=500, help="Jobs to queue (two label sets).")
    ] = 12,
    backend: Annotated[
        DemoBackend,
        typer.Option(help="Where runners run; auto: LXD, else Docker, else local processes."),
    ] = DemoBackend.auto,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Also write the summary to this JSON file.")
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Give up after this many seconds overall (image build included).")
    ] = 1800.0,
    log_file: Annotated[
        Path | None,
        typer.Option(
            "--log-file", help="Keep the manager's log here (default: a temp file, removed)."
        ),
    ] = None,
) -> None:
    """Show the whole system working on this machine (no --config needed).

    Starts a local GitHub emulator, a private Redis, the best backend here (LXD, else Docker, else local processes; it says which and why) and a RunnerManager service; builds or reuses the runner image; queues jobs over two label sets with real steps, shows runners and jobs live, prints a summary (jobs done, pickup p50/p95, GitHub calls spent, runners left) and removes everything it started, also on Ctrl-C.

    Exit status 0 only when every job completed and no runner is left. LXD and Docker need root; scripts/demo.sh installs and starts them first.
    """
    from github_runner_manager.demo import run_demo

    options: _Options = ctx.obj
    level = (options.log_level or LogLevel.info).value
    raise typer.Exit(
        run_demo(jobs=jobs, backend=backend.value, json_path=json_file, timeout=timeout,
                 log_file=log_file, log_level=level)
    )  # fmt: skip


# ------------------------------------------------------------------------------- entry point
def _exit_code(exc: BaseException) -> tuple[int, str]:
    """Map an error to (exit code, one-line message)."""
    from github_runner_manager.runner_binary import RunnerBinaryError

    try:
        from github_runner_manager.image import ImageBuildError
    except ImportError:  # pragma: no cover - image.py ships with the package
        ImageBuildError = RuntimeError  # type: ignore[misc,assignment]  # noqa: N806
    from github_runner_manager.manager import ImageBuildUnavailable

    if isinstance(exc, ConfigError):
        return 2, f"invalid configuration: {exc}"
    if isinstance(exc, GitHubAuthError):
        return 2, f"GitHub: {exc}"
    if isinstance(exc, BackendConfigError | MissingDependencyError):
        return 2, f"backend: {exc}"
    if isinstance(exc, AuthError):
        return 2, f"backend credentials rejected: {exc}"
    if isinstance(exc, StoreUnavailable):
        return 1, f"Redis: {exc}"
    if isinstance(exc, GitHubError):
        return 1, f"GitHub: {exc}"
    if isinstance(exc, BackendError):
        return 1, f"backend: {exc}"
    if isinstance(exc, RunnerBinaryError):
        return 1, f"runner binary: {exc}"
    if isinstance(exc, ImageBuildError | ImageBuildUnavailable):
        return 1, f"image build: {exc}"
    if isinstance(exc, OSError):
        return 1, f"{exc.strerror or exc}" + (
            f": {exc.filename}" if getattr(exc, "filename", None) else ""
        )
    return 1, f"unexpected {type(exc).__name__}: {exc} (run with --log-level debug for details)"


def _is_usage_error(exc: BaseException) -> bool:
    if isinstance(exc, click.ClickException):
        return True
    return (
        isinstance(exc, typer.TyperException)
        and callable(getattr(exc, "show", None))
        and hasattr(exc, "exit_code")
    )


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns (and exits with) the exit code."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name=PROG, standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        typer.echo(f"{PROG}: interrupted", err=True)
        code = 130
    except Exception as exc:
        if _is_usage_error(
            exc
        ):  # click's (or typer's vendored click's) usage errors: usage + message
            exc.show()  # type: ignore[attr-defined]
            code = int(exc.exit_code)  # type: ignore[attr-defined]
        else:  # one line for the operator, never a traceback
            code, message = _exit_code(exc)
            logger.debug("error details", exc_info=exc)
            typer.echo(f"{PROG}: error: {message}", err=True)
    if __name__ == "__main__" or argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":  # pragma: no cover
    main()
