import pytest

from gspo_async.models.tokenizer import build_char_tokenizer
from gspo_async.tasks.prompting import encode_prompt, render_prompt

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


def test_plain_prompt_gets_bos_and_characters():
    tok = build_char_tokenizer()
    ids = encode_prompt(tok, "12+3=")
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids[1:]) == "12+3="
    assert render_prompt(tok, "x", system="be brief") == "be brief\nx"


def test_chat_template_is_used_when_present_without_a_second_bos():
    tok = build_char_tokenizer()
    tok.chat_template = TEMPLATE
    assert render_prompt(tok, "hi", system="s") == "<bos>[system]s\n[user]hi\n[assistant]"
    ids = encode_prompt(tok, "hi")
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "[user]hi\n[assistant]"
    plain = encode_prompt(tok, "hi", chat=False)
    assert plain[0] == tok.bos_token_id and tok.decode(plain[1:]) == "hi"


def test_forcing_chat_without_template_is_an_error():
    with pytest.raises(ValueError, match="no chat_template"):
        encode_prompt(build_char_tokenizer(), "hi", chat=True)
