"""github_runner_manager: keeps pools of ephemeral GitHub Actions self-hosted runners alive.

The library never imports ``ops``; the charm (``src/charm.py``) and the ``github-runner-manager``
console script are two thin front ends over the same :class:`~github_runner_manager.manager.RunnerManager`.
"""

__version__ = "0.1.0"
