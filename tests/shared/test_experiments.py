"""A/B variant assignment: stable per client and user, split by the configured share, fresh per experiment."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from shared.experiments import Experiment, assign, bucket
from shared.settings import Settings

USERS = [f"user-{i}" for i in range(4000)]


def test_assignment_is_stable_across_calls_and_processes() -> None:
    experiment = Experiment(name="steps-20", share=0.5, steps=20)
    here = [assign(experiment, "client-1", user) for user in USERS[:200]]
    assert here == [assign(experiment, "client-1", user) for user in USERS[:200]]
    # Another interpreter (another API process, or after a restart) agrees: no per-process salt.
    code = ("from shared.experiments import Experiment, assign; e = Experiment(name='steps-20', share=0.5, steps=20);"
            "print(''.join(assign(e, 'client-1', f'user-{i}') for i in range(200)))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                           timeout=60).stdout.strip()
    assert other == "".join(here)


@pytest.mark.parametrize("share", [0.1, 0.5, 0.9])
def test_the_split_follows_the_share(share: float) -> None:
    experiment = Experiment(name="guidance-5", share=share, guidance_scale=5.0)
    in_b = sum(assign(experiment, "client-1", user) == "b" for user in USERS) / len(USERS)
    # 4000 users: the binomial standard deviation is at most 0.8 %; 3 % is ~4 sigma.
    assert abs(in_b - share) < 0.03


def test_edges_and_independence() -> None:
    assert {assign(None, "c", user) for user in USERS[:100]} == {"a"}
    assert {assign(Experiment(name="x", share=0.0), "c", user) for user in USERS[:100]} == {"a"}
    assert {assign(Experiment(name="x", share=1.0), "c", user) for user in USERS[:100]} == {"b"}
    # The client is part of the key (the same user id at two clients is two people), and so is the experiment.
    first = [bucket("e1", "c1", user) < 0.5 for user in USERS[:400]]
    assert first != [bucket("e1", "c2", user) < 0.5 for user in USERS[:400]]
    assert first != [bucket("e2", "c1", user) < 0.5 for user in USERS[:400]]
    assert all(0.0 <= bucket("e", "c", user) < 1.0 for user in USERS[:400])


def test_experiments_come_from_settings_and_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ILLUSTRATIONS_EXPERIMENT", '{"name": "lora-watercolor", "share": 0.25, '
                                                   '"style_lora": "watercolor", "lora_scale": 0.6}')
    experiment = Settings().experiment
    assert experiment is not None
    assert experiment.overrides() == {"style_lora": "watercolor", "lora_scale": 0.6}
    with pytest.raises(ValidationError):
        Experiment(name="bad name!", share=0.5)
    with pytest.raises(ValidationError):
        Experiment(name="x", share=1.5)
    with pytest.raises(ValidationError):
        Experiment(name="x", share=0.5, steps=1000)
