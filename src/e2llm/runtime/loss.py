"""Losing a stage actor: telling a dead actor from a failed stage, and the error that carries it.

A Ray call fails with `RayActorError` when the actor's process or its node died; any other
exception is the stage's own failure (the request fails, the replica serves on). A loss becomes
`ReplicaLost`, which the request's life cycle (`e2llm.runtime.lifecycle`) answers by migrating the
request to a live replica or failing it explicitly.
"""

from __future__ import annotations

from typing import Any


class ReplicaLost(Exception):
    """A replica lost a stage actor (the process or its node died) and serves no more."""

    def __init__(self, label: str, reason: str):
        super().__init__(f"replica {label} lost: {reason}")
        self.label = label


class Evicted(ReplicaLost):
    """A replica hands its sequences over (it switches role): they migrate like those of a lost
    replica, but the replica serves on, and the move does not count against a request's
    migrations."""

    def __init__(self, label: str, reason: str):
        super().__init__(label, reason)
        self.args = (f"replica {label} {reason}",)


def is_actor_loss(error: BaseException) -> bool:
    """Whether a Ray call failed because an actor is gone (dead, or its node unreachable)."""
    from ray.exceptions import RayActorError

    return isinstance(error, RayActorError)


def lost_actor_id(error: BaseException) -> str | None:
    """The hex id of the actor whose loss `error` reports, where Ray names it."""
    actor_id = getattr(error, "actor_id", None)
    return actor_id if isinstance(actor_id, str) else None


def actor_hex(actor: Any) -> str | None:
    """An actor handle's hex id (as `lost_actor_id` reports it), None for a non-Ray stand-in."""
    actor_id = getattr(actor, "_actor_id", None)
    return actor_id.hex() if actor_id is not None else None
