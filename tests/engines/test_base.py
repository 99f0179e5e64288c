"""The request check every engine runs before generating (`engines.base.check_prompts`)."""

import pytest

from gspo_async.engines.base import check_prompts


@pytest.mark.parametrize("prompts, n, vocab, message", [
    ([[1, 2]], 0, 10, "n=0 responses per prompt"),
    ([], 1, 10, "at least one prompt"),
    ([[1], []], 1, 10, "prompt 1 is empty"),
    ([[1, 10]], 1, 10, r"prompt 0 has token ids \[10\] outside the vocabulary 0..9"),
    ([[-1]], 1, 10, r"token ids \[-1\]"),
])
def test_refused_requests_name_the_problem(prompts, n, vocab, message):
    with pytest.raises(ValueError, match=message):
        check_prompts(prompts, n, vocab)


def test_valid_requests_pass_and_unknown_vocab_skips_the_id_check():
    check_prompts([[0, 9], [5]], 2, 10)
    check_prompts([[10_000]], 1, None)
