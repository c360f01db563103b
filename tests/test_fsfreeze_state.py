"""The fsfreeze state machine (``agent/system/fsfreeze/state.py``): every transition
outside its table is refused."""

from __future__ import annotations

import pytest

from agent.system.fsfreeze.state import (
    TRANSITIONS,
    FreezeEvent,
    FreezeMachine,
    FreezeState,
    FreezeStateError,
)


def test_every_transition_outside_the_table_is_refused() -> None:
    for state in FreezeState:
        for event in FreezeEvent:
            machine = FreezeMachine(state)
            if (state, event) in TRANSITIONS:
                assert machine.fire(event) is TRANSITIONS[state, event]
            else:
                with pytest.raises(FreezeStateError):
                    machine.fire(event)
                assert machine.state is state


def test_frozen_means_anything_but_thawed() -> None:
    assert [s for s in FreezeState if FreezeMachine(s).frozen] == [
        FreezeState.FREEZING,
        FreezeState.FROZEN,
        FreezeState.THAWING,
    ]
