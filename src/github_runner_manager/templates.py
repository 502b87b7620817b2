"""Rendering of the instance templates (cloud-init user-data, runner start script, backend specs).

Templates are Jinja2 files named ``*.j2``. Each is looked up first in the operator's
``templates_dir`` (a file there overrides the default of the same name, one file at a time), then in
the defaults shipped with the package: the repository's ``templates/`` in a checkout, or
``github_runner_manager/_templates`` in an installed wheel.

Besides Jinja2's own, templates get the filter ``shquote`` (quote for a POSIX shell) and the test
``ipv6`` (an address or CIDR text is IPv6). Templates see the variables nomadtools operators know (``StrictUndefined``: a misspelt variable is an
error, not an empty string):

* ``CONFIG`` -- the effective configuration as plain data, secrets redacted (:func:`dump_config_dict`);
* ``RUN`` -- ``RUNNER_NAME``, ``REPO_URL`` (where the runner registers), ``REPO`` (``owner/name`` or
  ``""``), ``LABELS`` (comma-separated), ``INFO`` (free text about the runner);
* ``RUNSON`` -- the job's ``k=v`` runs-on tokens;
* ``SETTINGS`` -- the group, the chosen backend and its (redacted) settings, and the runner's size;
* ``JIT_CONFIG`` -- the runner's one-time JIT config, the only secret a template ever sees;
* ``DENYLIST`` -- CIDRs the runner must not reach, as text.
"""

from __future__ import annotations

import functools
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2

from github_runner_manager.config import (
    GitHubPath,
    ManagerConfig,
    RunnerGroup,
    dump_config_dict,
    redact_settings,
)
from github_runner_manager.labels import Sizing

__all__ = [
    "INSTALLED_TEMPLATES",
    "REPO_TEMPLATES",
    "START_SCRIPT",
    "USER_DATA",
    "build_context",
    "default_template_dirs",
    "environment",
    "render",
    "render_start_script",
    "render_user_data",
]

#: Defaults in a source checkout: ``<repo>/templates``.
REPO_TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
#: Defaults in an installed wheel (pyproject package-data copies ``templates/*.j2`` here).
INSTALLED_TEMPLATES = Path(__file__).resolve().parent / "_templates"

USER_DATA = "user-data.j2"
START_SCRIPT = "start-runner.sh.j2"


def default_template_dirs() -> list[Path]:
    """Where the shipped templates are: the installed copy and/or the checkout's ``templates/``."""
    found = [d for d in (REPO_TEMPLATES, INSTALLED_TEMPLATES) if (d / USER_DATA).is_file()]
    if not found:
        raise FileNotFoundError(
            f"no default templates found (looked for {USER_DATA} in {REPO_TEMPLATES} and "
            f"{INSTALLED_TEMPLATES}); reinstall github-runner-manager"
        )
    return found


@functools.lru_cache(maxsize=16)
def _environment(search_path: tuple[str, ...]) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(list(search_path)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - renders YAML and shell, not HTML
        keep_trailing_newline=True,
    )
    env.filters["shquote"] = lambda value: shlex.quote(str(value))
    env.tests["ipv6"] = lambda value: ":" in str(value)
    return env


def environment(templates_dir: Path | str | None = None) -> jinja2.Environment:
    """The Jinja2 environment: ``templates_dir`` (if any) first, then the shipped defaults."""
    dirs = [Path(templates_dir)] if templates_dir else []
    dirs += default_template_dirs()
    return _environment(tuple(str(d) for d in dirs))


def _template_name(name: str) -> str:
    return name if name.endswith(".j2") else f"{name}.j2"


def render(
    name: str, context: Mapping[str, Any], *, templates_dir: Path | str | None = None
) -> str:
    """Render a template by name (``user-data`` or ``user-data.j2``).

    ``templates_dir`` defaults to ``CONFIG.templates_dir`` from the context.

    Raises:
        jinja2.TemplateNotFound: no such template in the override dir or the defaults.
        jinja2.UndefinedError: the template uses a variable the context lacks.
    """
    if templates_dir is None:
        config = context.get("CONFIG")
        if isinstance(config, Mapping):
            templates_dir = config.get("templates_dir")
    template = environment(templates_dir).get_template(_template_name(name))
    return template.render(dict(context))


def render_user_data(context: Mapping[str, Any], *, templates_dir: Path | str | None = None) -> str:
    """The instance's cloud-init user-data: writes the JIT config and starts the runner service."""
    return render(USER_DATA, context, templates_dir=templates_dir)


def render_start_script(
    context: Mapping[str, Any], *, templates_dir: Path | str | None = None
) -> str:
    """The shell script that runs the runner once (JIT config) and powers the machine off."""
    return render(START_SCRIPT, context, templates_dir=templates_dir)


def build_context(
    config: ManagerConfig,
    *,
    runner_name: str,
    group: RunnerGroup,
    path: GitHubPath,
    jit_config: str,
    labels: Sequence[str] = (),
    runson: Mapping[str, str] | None = None,
    repo: str | None = None,
    info: str = "",
    sizing: Sizing | None = None,
    backend: str | None = None,
) -> dict[str, Any]:
    """The template context for one runner; holds no secret but ``jit_config``.

    Args:
        config: the manager's configuration (dumped redacted into ``CONFIG``).
        runner_name: the runner and instance name.
        group: the runner's group.
        path: where the runner registers (gives ``REPO_URL``; ``REPO`` when it is a repository).
        jit_config: the runner's encoded JIT config.
        labels: the runner's labels.
        runson: the job's ``k=v`` tokens.
        repo: the job's repository (``owner/name``) when the runner is made for one job.
        info: free text for ``RUN.INFO``.
        sizing: the runner's size (default: the group's).
        backend: the backend creating it (default: the group's first).
    """
    backend_name = backend or group.backend_order[0]
    size = sizing or Sizing(cpu=group.cpu, memory=group.memory, disk=group.disk)
    if repo is None:
        repo = str(path) if path.kind == "repo" else ""
    return {
        "CONFIG": dump_config_dict(config),
        "RUN": {
            "RUNNER_NAME": runner_name,
            "REPO_URL": config.github.html_url(path),
            "REPO": repo,
            "LABELS": ",".join(labels),
            "INFO": info,
        },
        "RUNSON": dict(runson or {}),
        "SETTINGS": {
            "group": group.model_dump(mode="json"),
            "backend": backend_name,
            "backend_settings": redact_settings(config.backend_settings(backend_name)),
            "cpu": size.cpu,
            "memory": size.memory,
            "disk": size.disk,
            "ephemeral": group.ephemeral,
            "prefix": config.prefix,
            "unit": config.unit,
        },
        "JIT_CONFIG": jit_config,
        "DENYLIST": [str(net) for net in config.denylist],
    }
