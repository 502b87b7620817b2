"""Runner image build, cold vs warm: ``github_runner_manager.image.build_runner_image`` (which runs
``scripts/build-runner-image.sh``) with the emulator's runner application.

* cold: an empty cache directory (mmdebstrap bootstraps the root filesystem from the host's mirror);
* warm: the same inputs again with that cache (the finished root filesystem is reused; packing and the
  LXD import remain).

The container image only (``vm=False``): this host cannot boot VMs (no vhost-vsock), and the container
image is what the LXD pickup benchmark launches. Images go under the alias prefix ``ghrm-bench`` so no
other alias moves. The cache of the last full run stays in ``$GHRM_BENCH_CACHE`` (default
/var/cache/github-runner-bench/image-cache); ``--quick`` measures only the warm build, from that cache,
when it is there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench_support import Context, Figures, Skip, runner_tarball

NAME = "image"
KEYS = ["image_build_cold_s", "image_build_warm_s"]
ALIAS_PREFIX = "ghrm-bench"
BASE = "debian:bookworm"
BENCH_CACHE = Path(os.environ.get("GHRM_BENCH_CACHE", "/var/cache/github-runner-bench"))
WARM_CACHE = BENCH_CACHE / "image-cache"


def lxd_ready() -> str | None:
    """None when LXD and the builder's tools can be used here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root (the image builder and LXD run as root)"
    for tool in ("lxc", "mmdebstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        subprocess.run(["lxc", "info"], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return "LXD is not running (scripts/start-lxd.sh starts it)"
    return None


def options(app: tuple[Path, str, str], cache_dir: Path, log_file: Path) -> Any:
    from github_runner_manager.image import ImageBuildOptions

    path, sha256, version = app
    return ImageBuildOptions(
        runner_sha256=sha256,
        runner_tarball=path,
        runner_version=version,
        base=BASE,
        alias_prefix=ALIAS_PREFIX,
        cache_dir=cache_dir,
        log_file=log_file,
        vm=False,
        timeout=3600.0,
    )


def image_alias() -> str:
    return f"{ALIAS_PREFIX}-{BASE.replace(':', '-')}"


def alias_cache_key(alias: str) -> str | None:
    """The ``cache_key`` property of the image behind ``alias`` (None when there is no such alias)."""
    import json

    try:
        target = json.loads(
            subprocess.run(
                ["lxc", "query", f"/1.0/images/aliases/{alias}"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
        )["target"]
        info = json.loads(
            subprocess.run(
                ["lxc", "query", f"/1.0/images/{target}"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
        )
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        return None
    return (info.get("properties") or {}).get("cache_key")


def ensure_image(ctx: Context) -> str:
    """The bench runner image alias for the current inputs: reused, else built with the bench cache.

    Raises:
        Skip: LXD or the builder cannot run here, or (quick mode) the image would need a cold build.
    """
    from github_runner_manager.image import build_runner_image, image_cache_key

    if "runner_image_alias" in ctx.shared:
        return str(ctx.shared["runner_image_alias"])
    reason = lxd_ready()
    if reason:
        raise Skip(reason)
    app = runner_tarball(ctx.tmp / "runner-app-image")
    WARM_CACHE.mkdir(parents=True, exist_ok=True)
    opts = options(app, WARM_CACHE, BENCH_CACHE / "build.log")
    key = image_cache_key(opts)
    alias = image_alias()
    if alias_cache_key(alias) == key:
        ctx.shared["runner_image_alias"] = alias
        return alias
    if ctx.quick and not (WARM_CACHE / "rootfs" / f"{key}.tar").exists():
        raise Skip(
            "the runner image is not built and quick mode does not build it cold (run the full mode once)"
        )
    result = build_runner_image(opts)
    ctx.shared["runner_image_alias"] = result.alias or alias
    return str(ctx.shared["runner_image_alias"])


def run(ctx: Context) -> Figures:
    from github_runner_manager.image import build_runner_image, image_cache_key

    figures = Figures()
    reason = lxd_ready()
    if reason:
        figures.null(KEYS, reason)
        return figures
    app = runner_tarball(ctx.tmp / "runner-app-image")
    BENCH_CACHE.mkdir(parents=True, exist_ok=True)
    details: dict[str, Any] = {"base": BASE, "vm": False, "alias_prefix": ALIAS_PREFIX}
    figures.details["image"] = details
    if ctx.quick:
        figures.set("image_build_cold_s", None, "skipped in quick mode")
        opts = options(app, WARM_CACHE, BENCH_CACHE / "build.log")
        key = image_cache_key(opts)
        if not (WARM_CACHE / "rootfs" / f"{key}.tar").exists():
            figures.set(
                "image_build_warm_s",
                None,
                "skipped in quick mode: no warm cache for these inputs (the full mode leaves one in "
                f"{WARM_CACHE})",
            )
            return figures
        started = time.monotonic()
        warm = build_runner_image(opts)
        details["warm"] = {
            "script_s": warm.seconds,
            "wall_s": time.monotonic() - started,
            "cached": warm.cached,
        }
        figures.set("image_build_warm_s", warm.seconds)
        ctx.shared["runner_image_alias"] = warm.alias
        return figures

    from github_runner_manager.image import ImageBuildError

    cold_cache = BENCH_CACHE / f"cold-{int(time.time())}"
    if cold_cache.exists():
        shutil.rmtree(cold_cache)
    cold_cache.mkdir(parents=True)
    try:
        opts = options(app, cold_cache, BENCH_CACHE / "build-cold.log")
        ctx.log("image: cold build (empty cache; mmdebstrap from the mirror)")
        started = time.monotonic()
        try:
            cold = build_runner_image(opts)
        except ImageBuildError as exc:
            details["cold_error"] = {
                "step": exc.step,
                "exit_code": exc.exit_code,
                "output": exc.output[-3000:],
            }
            raise
        details["cold"] = {
            "script_s": cold.seconds,
            "wall_s": time.monotonic() - started,
            "cached": cold.cached,
        }
        figures.set("image_build_cold_s", cold.seconds)
        ctx.log(f"image: cold {cold.seconds:.1f}s; warm build")
        started = time.monotonic()
        warm = build_runner_image(opts)
        details["warm"] = {
            "script_s": warm.seconds,
            "wall_s": time.monotonic() - started,
            "cached": warm.cached,
        }
        figures.set("image_build_warm_s", warm.seconds)
        ctx.shared["runner_image_alias"] = warm.alias
        # keep this cache as the warm cache of later (quick) runs
        if WARM_CACHE.exists():
            shutil.rmtree(WARM_CACHE)
        cold_cache.rename(WARM_CACHE)
    finally:
        if cold_cache.exists():
            shutil.rmtree(cold_cache, ignore_errors=True)
    return figures
