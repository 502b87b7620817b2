"""State builders shared by the charm tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from ops import testing

from charm import GithubRunnerCharm

ROOT = Path(__file__).resolve().parents[3]
CONFIG_OPTIONS: dict[str, Any] = yaml.safe_load((ROOT / "config.yaml").read_text())["options"]
ACTIONS: dict[str, Any] = yaml.safe_load((ROOT / "actions.yaml").read_text())

TOKEN = "ghp_T0kenValueThatMustNeverBeShown1234"
WEBHOOK_SECRET = "whsec-HmacKeyThatMustNeverBeShown"
AWS_SECRET_KEY = "AwsSecretAccessKeyThatMustNeverBeShown"
REDIS_PASSWORD = "RedisPasswordThatMustNeverBeShown"
SECRET_VALUES = (TOKEN, WEBHOOK_SECRET, AWS_SECRET_KEY, REDIS_PASSWORD)

TOKEN_SECRET = testing.Secret({"token": TOKEN}, id="secret:" + "t" * 20)
WEBHOOK_SECRET_OBJ = testing.Secret({"value": WEBHOOK_SECRET}, id="secret:" + "w" * 20)
BACKEND_SECRET = testing.Secret(
    {
        "config": f"aws: {{region: eu-west-1, access_key_id: AKIAX, secret_access_key: {AWS_SECRET_KEY}}}"
    },
    id="secret:" + "b" * 20,
)
SECRETS = (TOKEN_SECRET, WEBHOOK_SECRET_OBJ, BACKEND_SECRET)

#: The smallest valid config: everything else at its default.
VALID_CONFIG: dict[str, Any] = {"path": "acme", "token": TOKEN_SECRET.id}


def stored_state(runner_storage: str | None) -> testing.StoredState:
    """The charm's StoredState as left by an earlier hook."""
    return testing.StoredState(
        "_stored",
        owner_path="GithubRunnerCharm",
        content={"runner_storage": runner_storage or ""},
    )


def make_state(
    config: dict[str, Any] | None = None,
    *,
    installed_runner_storage: str | None = None,
    relations: tuple[testing.RelationBase, ...] = (),
    leader: bool = True,
) -> testing.State:
    """A state with the shared secrets granted; `config` is merged over `VALID_CONFIG`."""
    stored = (stored_state(installed_runner_storage),) if installed_runner_storage else ()
    return testing.State(
        config={**VALID_CONFIG, **(config or {})},
        secrets=SECRETS,
        stored_states=stored,
        relations=relations,
        leader=leader,
    )


def context() -> testing.Context[GithubRunnerCharm]:
    """A context for the charm, reading metadata.yaml, config.yaml and actions.yaml."""
    return testing.Context(GithubRunnerCharm)


def read_secret_from(state: testing.State):
    """`read_secret` for `CharmState.from_config` that sees what the charm sees in `state`."""
    from charm_state import SecretUnreadableError

    by_id = {secret.id: secret.tracked_content for secret in state.secrets}

    def read_secret(secret_id: str) -> dict[str, str]:
        if secret_id not in by_id:
            raise SecretUnreadableError("was not found")
        return dict(by_id[secret_id])

    return read_secret
