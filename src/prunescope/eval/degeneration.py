"""How degenerate is generated text? Three small, dependency-free measures.

* ``repeated_ngram_rate_n`` (n = 2, 3, 4): within one response, the share of its n-grams that repeat an
  earlier n-gram of the same response (0 = no repetition, near 1 = a loop), averaged over responses
  that have at least one n-gram.
* ``self_bleu``: intra-response self-BLEU. A response is split into sentences (lines and ``. ! ?``);
  each sentence is scored with BLEU-4 against the other sentences of the same response as references,
  and the scores are averaged (responses with fewer than two sentences are skipped). High values mean
  the response keeps saying the same thing. BLEU here is the standard geometric mean of clipped 1–4-gram
  precisions with add-one smoothing for n > 1 and the brevity penalty against the closest reference length.
* ``mean_length``: mean number of whitespace-separated words per response (``mean_chars`` in characters).

Tokens are lower-cased whitespace words, so the numbers compare across models with different tokenizers.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def _words(text: str) -> list[str]:
    return text.lower().split()


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def repeated_ngram_rate(text: str, n: int) -> float | None:
    """Share of the n-grams of ``text`` that already occurred earlier in it (None if it has none)."""
    grams = _ngrams(_words(text), n)
    if not grams:
        return None
    return 1 - len(set(grams)) / len(grams)


def bleu(hypothesis: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> float:
    """Sentence BLEU of ``hypothesis`` words against ``references`` (add-one smoothing for n > 1)."""
    if not hypothesis or not references:
        return 0.0
    log_p = 0.0
    for n in range(1, max_n + 1):
        hyp = Counter(_ngrams(hypothesis, n))
        total = sum(hyp.values())
        max_ref: Counter = Counter()
        for ref in references:
            for g, c in Counter(_ngrams(ref, n)).items():
                max_ref[g] = max(max_ref[g], c)
        clipped = sum(min(c, max_ref[g]) for g, c in hyp.items())
        if n == 1:
            if clipped == 0:
                return 0.0
            log_p += math.log(clipped / total)
        else:
            log_p += math.log((clipped + 1) / (total + 1))
    closest = min((len(r) for r in references), key=lambda L: (abs(L - len(hypothesis)), L))
    bp = 1.0 if len(hypothesis) > closest else math.exp(1 - closest / len(hypothesis))
    return bp * math.exp(log_p / max_n)


def self_bleu(text: str) -> float | None:
    """Mean BLEU of each sentence of ``text`` against its other sentences (None under two sentences)."""
    sentences = [_words(s) for s in _SENTENCE.split(text) if s.strip()]
    if len(sentences) < 2:
        return None
    return sum(bleu(s, sentences[:i] + sentences[i + 1:]) for i, s in enumerate(sentences)) / len(sentences)


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def degeneration(outputs: Sequence[str]) -> dict[str, float | None]:
    """Repeated 2/3/4-gram rates, intra-response self-BLEU and mean length over ``outputs``."""
    result: dict[str, float | None] = {
        f"repeated_ngram_rate_{n}": _mean(repeated_ngram_rate(o, n) for o in outputs) for n in (2, 3, 4)}
    result["self_bleu"] = _mean(self_bleu(o) for o in outputs)
    result["mean_length"] = _mean(len(_words(o)) for o in outputs) or 0.0
    result["mean_chars"] = _mean(len(o) for o in outputs) or 0.0
    return result
