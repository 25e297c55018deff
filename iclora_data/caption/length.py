"""A caption's length in tokens of the trainer's text encoder (FLUX's T5 reads 512).

With a tokenizer (``caption.tokenizer``: a T5 tokenizer folder, or a hub id in the local cache) the
count is exact. Without one, :func:`estimate_t5_tokens` gives a conservative estimate (it counts
more than T5 does, never fewer, on the texts captions are made of):

- a run of Latin letters: one token per started 4 letters, at least one (T5's SentencePiece splits
  English words into pieces averaging 4-6 letters, a common word being one piece: about 1.3 tokens per
  word; this counts about 1.6); a run of capitals (the tags' ``TOP``, ``LEFT``) per started 2 letters;
- each digit: one token (T5 splits numbers into short pieces);
- each other character that is not a space, a letter or a digit (punctuation, quotes, brackets of
  the tags): one token;
- each letter of a script T5 was not trained on (CJK, Cyrillic, Arabic, ...): one token per
  character (T5's vocabulary lacks them; each becomes its own piece), not one per word;
- plus the closing ``</s>``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from functools import cache
from pathlib import Path

from iclora_data.caption.base import CaptionerError

_PIECES = re.compile(r"[A-Za-z\u00c0-\u024f]+|\d|\S", re.UNICODE)
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]+")


def estimate_t5_tokens(text: str) -> int:
    """Conservative T5 token count of ``text`` (see the module docstring); includes ``</s>``."""
    count = 1
    for piece in _PIECES.findall(text):
        if _LATIN.fullmatch(piece):
            count += -(-len(piece) // (2 if piece.isupper() and len(piece) > 1 else 4))
        else:
            count += 1
    return count


def is_cjk(char: str) -> bool:
    return unicodedata.name(char, "").startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL"))


@cache
def _load_counter(tokenizer: str) -> Callable[[str], int]:
    from transformers import AutoTokenizer

    local = Path(tokenizer).expanduser()
    try:
        tok = AutoTokenizer.from_pretrained(str(local) if local.is_dir() else tokenizer)
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError/ValueError here
        raise CaptionerError(f"cannot load the caption length tokenizer {tokenizer!r}: "
                             f"{str(exc).splitlines()[0][:160]}") from None

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=True)["input_ids"])

    return count


def token_counter(tokenizer: str | None) -> Callable[[str], int]:
    """Counts tokens as the trainer's text encoder does: exactly with ``tokenizer``, else the estimate."""
    if tokenizer is None:
        return estimate_t5_tokens
    return _load_counter(tokenizer)
