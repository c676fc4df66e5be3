"""Tokenizer with Lumen's special tokens. The tiny preset trains a word-level one on the shards' text."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from pipelines.instructions import SPECIAL_TOKENS

IMAGE_TOKEN = "<image>"
BASE_SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", IMAGE_TOKEN]
ALL_SPECIALS = BASE_SPECIALS + list(SPECIAL_TOKENS)


def train_tokenizer(texts, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A lower-cased word-level tokenizer over the corpus; special tokens are single ids."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(r"\[[A-Z]+\]", "isolated"),
                                                pre_tokenizers.Whitespace()])
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=ALL_SPECIALS, min_frequency=1)
    tok.train_from_iterator(texts, trainer)
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    fast.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, *SPECIAL_TOKENS]})
    return fast


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    """A tokenizer saved with a checkpoint (or a LLaMA tokenizer folder); adds Lumen's tokens if missing."""
    tok = PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    missing = [t for t in [IMAGE_TOKEN, *SPECIAL_TOKENS] if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing})
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token
    return tok
