"""The fsfreeze state machine: its states, its events and every legal transition.

All the rules live in the table below, not in ``if`` chains spread over the
freezer. The agent counts as frozen in every state but THAWED: from the moment
a freeze starts until the last filesystem is thawed, it must not write to disk
and refuses the commands that are not allowed while frozen (as qemu-ga).

    THAWED --freeze--> FREEZING --frozen--> FROZEN --thaw--> THAWING --thawed--> THAWED
                          |                                     ^
                          +---------------undo------------------+

A freeze that fails, is cancelled or finds nothing it can freeze is undone:
what it froze is thawed and the hook, marker and watchdog are put back.
"""

from __future__ import annotations

import enum


class FreezeState(enum.Enum):
    THAWED = "thawed"
    FREEZING = "freezing"  # hook run, marker written, FIFREEZE calls under way
    FROZEN = "frozen"
    THAWING = "thawing"  # FITHAW calls under way: after a thaw, or undoing a freeze


class FreezeEvent(enum.Enum):
    FREEZE = "freeze"  # a freeze starts
    FROZEN = "frozen"  # at least one filesystem was frozen
    UNDO = "undo"  # the freeze failed, was cancelled or froze nothing
    THAW = "thaw"  # a thaw starts (command, auto-thaw timeout, shutdown)
    THAWED = "thawed"  # every filesystem we froze was thawed


TRANSITIONS: dict[tuple[FreezeState, FreezeEvent], FreezeState] = {
    (FreezeState.THAWED, FreezeEvent.FREEZE): FreezeState.FREEZING,
    (FreezeState.FREEZING, FreezeEvent.FROZEN): FreezeState.FROZEN,
    (FreezeState.FREEZING, FreezeEvent.UNDO): FreezeState.THAWING,
    (FreezeState.FROZEN, FreezeEvent.THAW): FreezeState.THAWING,
    (FreezeState.THAWING, FreezeEvent.THAWED): FreezeState.THAWED,
}


class FreezeStateError(RuntimeError):
    """An event that the current state does not allow: a bug or a race."""


class FreezeMachine:
    """The current state; :meth:`fire` moves it along the table or raises."""

    def __init__(self, state: FreezeState = FreezeState.THAWED) -> None:
        self.state = state

    @property
    def frozen(self) -> bool:
        return self.state is not FreezeState.THAWED

    def fire(self, event: FreezeEvent) -> FreezeState:
        try:
            self.state = TRANSITIONS[self.state, event]
        except KeyError:
            raise FreezeStateError(
                f"fsfreeze: cannot {event.value} while {self.state.value}"
            ) from None
        return self.state
