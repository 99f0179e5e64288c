"""The actor-learner wire protocol: messages (messages.py), msgpack codec (codec.py), validation (validate.py),
ZeroMQ endpoints (transport.py: server.py, client.py) and CurveZMQ keys (auth.py). Spec: docs/protocol.md."""

from gspo_async.protocol.messages import SCHEMA_VERSION, Limits, ProtocolError

__all__ = ["SCHEMA_VERSION", "Limits", "ProtocolError"]
