"""A character-level tokenizer for the tiny local model: one token per printable ASCII character.

Built with the `tokenizers` library (a BPE model with no merges, so every character is its own token) and wrapped
as a `PreTrainedTokenizerFast`, so it saves and loads like any Hugging Face tokenizer. Encoding prepends <bos>;
decoding concatenates characters. Characters outside the vocabulary map to <unk>.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")  # ids 0, 1, 2, 3
CHARACTERS = tuple(chr(c) for c in range(32, 127)) + ("\n",)


def build_char_tokenizer(model_max_length: int = 256) -> PreTrainedTokenizerFast:
    """The tokenizer: ids 0-3 are the special tokens, then the 95 printable ASCII characters and newline."""
    from tokenizers import Tokenizer, decoders, models, processors

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    backend.decoder = decoders.Fuse()  # join characters without inserting spaces
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    # padding_side must go to the constructor: set afterwards it is not saved (transformers v5)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=model_max_length,
    )
