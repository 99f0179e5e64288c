"""Well-formed hostile messages, drawn from the message declarations (tests/protocol/strategies.py), against the
decoder and an in-process server: each is encodable, and the receiver answers it with a message or a ProtocolError
with a documented code, never anything else. The same strategies drive a real learner process in
tests/reliability/test_wellformed_fuzz.py."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gspo_async.protocol.codec import decode, encode
from gspo_async.protocol.fields import FLOAT32_MAX
from gspo_async.protocol.messages import ERROR_CODES, MAX_ABS_REWARD, TO_LEARNER, Limits, ProtocolError
from tests.protocol.strategies import message

LIMITS = Limits(vocab_size=64, max_prompt_tokens=16, max_response_tokens=32, group_size=2, max_items=8,
                max_lease_prompts=16)


@pytest.mark.parametrize("msg_type", sorted(TO_LEARNER))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_drawn_message_is_encodable_and_answered_by_a_code(msg_type, data):
    msg = data.draw(message(TO_LEARNER[msg_type], LIMITS))
    frames = encode(msg)
    try:
        back = decode(frames, limits=LIMITS)
    except ProtocolError as err:
        assert err.code in ERROR_CODES
        return
    assert type(back) is TO_LEARNER[msg_type]
    assert decode(encode(back), limits=LIMITS) == back  # what was accepted round-trips unchanged
    if msg_type == "rollout_group":
        assert all(abs(r.reward) <= MAX_ABS_REWARD for r in back.responses)
        assert all(0 <= t <= FLOAT32_MAX for t in back.timings.values())
        assert all(np.isfinite(r.reward) for r in back.responses)
