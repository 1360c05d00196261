"""VM states and the operations each allows.

Two layers, as in the seed's Hyper-V: the management service's states (what VMMS is doing
with the VM) and, while a worker process runs, the worker's states (what the virtual
machine is doing).  A VM with no worker and no management operation is Off, or Saved when
it has a saved state to resume from.

An operation asked of a VM in a state that does not allow it is refused with one message
(:class:`IllegalTransition`, exit status 2 at the command line); nothing is changed.
"""

from __future__ import annotations

from typing import Final

# The management service's states (the seed's VMMS states).
NOT_ACTIVE: Final = "Not Active"
STARTING: Final = "Starting"
ACTIVE: Final = "Active"
TAKING_SNAPSHOT: Final = "Taking Snapshot"
APPLYING_SNAPSHOT: Final = "Applying Snapshot"
DELETING_SNAPSHOT: Final = "Deleting Snapshot"
MERGING_DISK: Final = "Merging Disk"
VMMS_STATES: Final = (NOT_ACTIVE, STARTING, ACTIVE, TAKING_SNAPSHOT, APPLYING_SNAPSHOT,
                      DELETING_SNAPSHOT, MERGING_DISK)

# The worker's states while it runs, and the two a VM rests in without one.
RUNNING: Final = "Running"
PAUSED: Final = "Paused"
SAVING: Final = "Saving"
SAVED: Final = "Saved"
RESETTING: Final = "Resetting"
STOPPING: Final = "Stopping"
OFF: Final = "Off"
WORKER_STATES: Final = (RUNNING, PAUSED, SAVING, SAVED, RESETTING, STOPPING)

#: States in which something is under way: every other operation waits for its end.
TRANSIENT: Final = frozenset({STARTING, TAKING_SNAPSHOT, APPLYING_SNAPSHOT, DELETING_SNAPSHOT,
                              MERGING_DISK, SAVING, RESETTING, STOPPING})

#: Operation -> the states it may start from.  A state not listed refuses the operation.
ALLOWED: Final[dict[str, frozenset[str]]] = {
    "start": frozenset({OFF, SAVED}),
    "stop": frozenset({RUNNING, PAUSED}),
    "pause": frozenset({RUNNING}),
    "resume": frozenset({PAUSED}),
    "save": frozenset({RUNNING, PAUSED}),
    "reset": frozenset({RUNNING, PAUSED}),
    "delete": frozenset({OFF, SAVED}),
    "console": frozenset({RUNNING, PAUSED}),
    "checkpoint": frozenset({OFF, SAVED, RUNNING, PAUSED}),
    "apply": frozenset({OFF, SAVED}),
    "checkpoint-delete": frozenset({OFF, SAVED, RUNNING, PAUSED}),
    # Requests to the guest's integration services: only a running guest answers.
    "vss": frozenset({RUNNING}),
    "ip-info": frozenset({RUNNING}),
}

#: Why an operation is refused in a resting state, when the bare rule would not say.
_HINTS: Final[dict[tuple[str, str], str]] = {
    ("delete", RUNNING): "stop it first",
    ("delete", PAUSED): "stop it first",
    ("start", RUNNING): "it is already running",
    ("start", PAUSED): "it is paused: resume it",
    ("apply", RUNNING): "stop or save it first",
    ("apply", PAUSED): "stop or save it first",
    ("pause", PAUSED): "it is already paused",
    ("resume", RUNNING): "it is not paused",
}


class IllegalTransition(Exception):
    """An operation the VM's current state does not allow; the message is for the user."""


def check(operation: str, name: str, state: str) -> None:
    """Raise IllegalTransition unless ``operation`` may start while VM ``name`` is ``state``."""
    allowed = ALLOWED[operation]
    if state in allowed:
        return
    verb = operation.replace("-", " ")
    if state in TRANSIENT:
        raise IllegalTransition(f"VM {name!r} is {state}: cannot {verb} it now (wait until "
                                "that has finished)")
    hint = _HINTS.get((operation, state))
    if hint is None:
        hint = "allowed when " + " or ".join(sorted(allowed))
    raise IllegalTransition(f"cannot {verb} VM {name!r} while it is {state}: {hint}")
