#!/usr/bin/env bash
# Start one actor against a running learner. Start as many as you like, on any machine, at any time.
#   launch/actor.sh HOST:PORT [key=value ...]     (overrides of the actor section, e.g. actor.device=cuda:1)
# Environment (all optional):
#   GSPO_LEARNER       HOST:PORT when no argument is given
#   GSPO_ACTOR_ID      actor id (default: hostname-pid)
#   GSPO_ACTOR_CONFIG  YAML with local actor settings (engine, device, CURVE client keys)
#   GSPO_DEVICE        actor.device (cpu, cuda, cuda:1)
#   GSPO_CLIENT_KEY    CURVE client secret key (e.g. keys/client0.key_secret from `gspo-async keys keys/`)
#   GSPO_SERVER_KEY    the learner's public key (default: server.key next to GSPO_CLIENT_KEY)
set -euo pipefail
learner="${1:-${GSPO_LEARNER:-}}"
if [ -z "$learner" ]; then
  echo "usage: launch/actor.sh HOST:PORT [key=value ...] (or set GSPO_LEARNER)" >&2
  exit 2
fi
[ $# -gt 0 ] && shift
cmd=(gspo-async actor --learner "$learner")
[ -n "${GSPO_ACTOR_ID:-}" ] && cmd+=(--id "$GSPO_ACTOR_ID")
[ -n "${GSPO_ACTOR_CONFIG:-}" ] && cmd+=(--config "$GSPO_ACTOR_CONFIG")
# Overrides always carry the actor. prefix: the actor reads them both as its section and as a whole config.
[ -n "${GSPO_DEVICE:-}" ] && cmd+=("actor.device=${GSPO_DEVICE}")
[ -n "${GSPO_CLIENT_KEY:-}" ] && cmd+=("actor.curve.secret_key=${GSPO_CLIENT_KEY}")
[ -n "${GSPO_SERVER_KEY:-}" ] && cmd+=("actor.curve.server_public_key=${GSPO_SERVER_KEY}")
cmd+=("$@")
echo "[launch/actor.sh] ${cmd[*]}" >&2
exec "${cmd[@]}"
