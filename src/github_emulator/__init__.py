"""A local GitHub for runner managers: REST subset, webhooks, runner agent and control API.

Start one with ``python -m github_emulator --print-url`` or, in tests,
``github_emulator.testing.start_emulator()``. See docs/emulator.md.
"""

from github_emulator.settings import DEFAULT_RUNNER_VERSION, Seed, Settings
from github_emulator.state import token_key
from github_emulator.webhooks import signature_256

__all__ = ["DEFAULT_RUNNER_VERSION", "Seed", "Settings", "signature_256", "token_key"]
