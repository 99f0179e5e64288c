from transformers import PreTrainedTokenizerFast

from gspo_async.models.tokenizer import CHARACTERS, SPECIAL_TOKENS, build_char_tokenizer


def test_one_token_per_character_with_bos_and_round_trip():
    tok = build_char_tokenizer()
    assert len(tok) == len(SPECIAL_TOKENS) + len(CHARACTERS) == 100
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    text = "37+485= 522\nsort {x}!"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok("7")["input_ids"] == [1, 4 + CHARACTERS.index("7")]


def test_unknown_characters_become_unk():
    tok = build_char_tokenizer()
    assert tok("a\u00e9b", add_special_tokens=False)["input_ids"] == [
        4 + CHARACTERS.index("a"), tok.unk_token_id, 4 + CHARACTERS.index("b")
    ]


def test_left_padding_survives_save_and_load(tmp_path):
    build_char_tokenizer().save_pretrained(tmp_path)
    tok = PreTrainedTokenizerFast.from_pretrained(tmp_path)
    assert tok.padding_side == "left"
    batch = tok(["1+1=", "12+10="], padding=True)["input_ids"]
    assert batch[0][:2] == [tok.pad_token_id, tok.pad_token_id] and batch[1][0] == tok.bos_token_id
