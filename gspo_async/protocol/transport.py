"""The two ends of the actor-learner connection: the learner's `LearnerServer` (ROUTER, binds) and the actor's
`ActorClient` (DEALER, connects). One host:port is all an actor needs."""

from gspo_async.protocol.client import ActorClient, LearnerUnavailable, RegistrationRefused
from gspo_async.protocol.server import LearnerServer

__all__ = ["ActorClient", "LearnerServer", "LearnerUnavailable", "RegistrationRefused"]
