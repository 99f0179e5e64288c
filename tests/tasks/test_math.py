"""`task.reward: math` compares final answers with math-verify: equivalent forms match, different values do not."""

import pytest

from gspo_async.tasks.scoring import math_answer

EQUIVALENT = [
    (r"\boxed{\dfrac{\sqrt{3}}{2}}", r"\frac{\sqrt3}{2}"),  # fractions and roots
    (r"\boxed{0.5}", r"\frac{1}{2}"),
    (r"\boxed{x=5}", "5"),  # an equation against its value
    (r"\boxed{\pi/2}", r"\frac{\pi}{2}"),  # pi
    (r"\boxed{90^\circ}", "90"),  # degrees
    (r"\boxed{50\%}", "50"),  # percentages
    (r"\boxed{\{1, 2\}}", r"\{2, 1\}"),  # sets, in any order
    (r"\boxed{(0, 1]}", "(0,1]"),  # intervals
    ("so the total is #### 1,000", "1000"),  # thousands separators, GSM8K's '####'
    ("Natalia sold 24 more, 72 in all.", "She sold 48+24 = 72 clips.\n#### 72"),  # last number, '####' reference
]
DIFFERENT = [
    (r"\boxed{\frac{\sqrt{3}}{3}}", r"\frac{\sqrt3}{2}"),
    (r"\boxed{x=6}", "5"),
    (r"\boxed{\pi}", r"\frac{\pi}{2}"),
    (r"\boxed{(0,1)}", "[0,1]"),  # open vs closed interval
    (r"\boxed{\{1, 3\}}", r"\{1, 2\}"),
    ("#### 1,001", "1000"),
    (r"\boxed{0.33}", r"\frac{1}{3}"),
    ("nothing here", "5"),
    (r"\boxed{}", ""),
]


@pytest.mark.parametrize("response, answer", EQUIVALENT)
def test_equivalent_answers_score_one(response, answer):
    assert math_answer("", response, answer) == 1.0


@pytest.mark.parametrize("response, answer", DIFFERENT)
def test_different_answers_score_zero(response, answer):
    assert math_answer("", response, answer) == 0.0
