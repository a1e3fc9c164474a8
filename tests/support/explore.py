"""How much hypothesis explores: example counts sized to the CI budget by
default, larger under the "slow" profile (scripts/test-slow:
``pytest --hypothesis-profile=slow``), and an environment variable over both."""

from __future__ import annotations

import os

from hypothesis import settings


def examples(env: str, ci: int, slow: int) -> int:
    if os.environ.get(env):
        return int(os.environ[env])
    return slow if settings.get_current_profile_name() == "slow" else ci
