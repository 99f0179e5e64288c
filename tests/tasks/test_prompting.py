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


# -- task.chat_template honoured identically by every role --------------------------------------------------------

from types import SimpleNamespace  # noqa: E402

from gspo_async.engines.base import Generation, SamplingSettings  # noqa: E402
from gspo_async.learner.prompts import PromptSource  # noqa: E402
from gspo_async.bootstrap.warmup import supervised_batch  # noqa: E402
from gspo_async.tasks.base import PromptItem  # noqa: E402
from gspo_async.tasks.evaluate import evaluate  # noqa: E402
from gspo_async.tasks.prompting import PromptEncoder  # noqa: E402


class RecordingEngine:
    """Answers every prompt with one fixed token and remembers the prompt ids it was given (evaluation only
    calls `generate`)."""

    def __init__(self, token: int):
        self.token, self.seen = token, []

    def generate(self, prompts, n, sampling):
        self.seen += [list(p) for p in prompts]
        return [[Generation([self.token], [-0.1], "length", [(0, 0, 1)])] * n for _ in prompts]


def templated_tokenizer():
    tok = build_char_tokenizer()
    tok.chat_template = TEMPLATE
    return tok


def test_chat_template_false_is_plain_text_in_learner_actor_eval_and_warmup():
    tok = templated_tokenizer()
    items = [PromptItem(i, f"{i}+1=", str(i + 1)) for i in range(3)]
    plain = [encode_prompt(tok, it.prompt, chat=False) for it in items]
    templated = [encode_prompt(tok, it.prompt) for it in items]
    assert plain != templated  # the tokenizer's template would change the ids

    encoder = PromptEncoder.from_task_config(tok, SimpleNamespace(chat_template=False, system_prompt=None))
    # learner: the prompt source issues these ids in leases, which actors generate from as they are
    source = PromptSource(encoder.encode_items(iter(items)))
    leased = [source.next().tokens.tolist() for _ in items]
    # evaluation
    engine = RecordingEngine(tok.convert_tokens_to_ids("5"))
    evaluate(engine, tok, items, lambda p, rs, a, m: [0.0] * len(rs), SamplingSettings(max_new_tokens=1),
             encode=encoder)
    # warm-up: the prompt part of each supervised sequence
    ids, _, loss_mask = supervised_batch(tok, items, encoder)
    warm = [row[: int(mask.nonzero()[0])].tolist() for row, mask in zip(ids, loss_mask)]
    assert leased == engine.seen == warm == plain


def test_chat_template_auto_uses_the_template_and_true_requires_one():
    tok = templated_tokenizer()
    auto = PromptEncoder.from_task_config(tok, SimpleNamespace(chat_template="auto", system_prompt="be brief"))
    assert auto.render("hi") == "<bos>[system]be brief\n[user]hi\n[assistant]"
    with pytest.raises(ValueError, match="no chat_template"):
        PromptEncoder.from_task_config(build_char_tokenizer(), SimpleNamespace(chat_template=True, system_prompt=None))


def test_chat_prompts_keep_their_system_turn_or_get_the_configured_one():
    tok = templated_tokenizer()
    chat = [{"role": "system", "content": "own"}, {"role": "user", "content": "q"}]
    assert render_prompt(tok, chat, system="cfg") == "<bos>[system]own\n[user]q\n[assistant]"
    assert render_prompt(tok, chat[1:], system="cfg") == "<bos>[system]cfg\n[user]q\n[assistant]"
    assert render_prompt(tok, chat, chat=False) == "own\nq"  # plain: the contents, one per line
    with pytest.raises(ValueError, match="message 0"):
        render_prompt(tok, [{"role": "user"}])


@pytest.mark.parametrize("setting, templated", [("false", False), ("auto", True)])
def test_the_learners_encoder_built_from_the_config_file_honours_chat_template(setting, templated):
    """`task.chat_template: false` read from YAML reaches the encoder the learner builds (scoring_for_run, which
    Learner.__init__ calls; its ids go into leases and evaluation) as "never", not as "when there is one"."""
    from gspo_async.config import load_config
    from gspo_async.tasks import task_from_config
    from gspo_async.tasks.reward_checks import scoring_for_run

    tok = templated_tokenizer()
    cfg = load_config("configs/quickstart.yaml", [f"task.chat_template={setting}", "task.reward_workers=0"])
    task = task_from_config(cfg.task)
    runner, encoder, _ = scoring_for_run(cfg.task, task, tok)
    runner.close()
    items = task.eval_items()[:3]
    want = [encode_prompt(tok, it.prompt, chat=templated) for it in items]
    assert want != [encode_prompt(tok, it.prompt, chat=not templated) for it in items]
    source = PromptSource(encoder.encode_items(iter(items)))
    assert [source.next().tokens.tolist() for _ in items] == want
    engine = RecordingEngine(tok.convert_tokens_to_ids("5"))
    evaluate(engine, tok, items, lambda p, rs, a, m: [0.0] * len(rs), SamplingSettings(max_new_tokens=1),
             encode=encoder)
    assert engine.seen == want
