"""Calibration text into token batches, against hand-worked values, the tokenizer itself and a
re-implementation of SLEB's window sampling (``utils/data_utils.py::get_wikitext2``)."""
from __future__ import annotations

import json
import math
import random
from types import SimpleNamespace

import pytest
import torch

from common import make_tiny_model
from prunescope.criteria import calibration as cal
from prunescope.criteria.calibration import (calibration_batches, context_limit, describe_calibration,
                                             load_calibration_texts, make_batches, pack, sample_windows,
                                             tokenize_texts)
from prunescope.errors import UsageError


@pytest.fixture(scope="module")
def llama():
    return make_tiny_model("llama", layers=2)  # max_position_embeddings = 128


@pytest.mark.parametrize("calib, described", [
    (None, "builtin:shakespeare.txt.gz"), (["a", "b"], "list of 2 texts"), (("a",), "list of 1 texts"),
    ("wikitext-2", "wikitext:wikitext-2-raw-v1"), ("wikitext2", "wikitext:wikitext-2-raw-v1"),
    ("org/name:cfg", "org/name:cfg"), ("data/c.jsonl", "data/c.jsonl"),
])
def test_describe_calibration(calib, described):
    assert describe_calibration(calib) == described


@pytest.mark.parametrize("spec, is_file", [
    ("name", False), ("org/name", False), ("org/name:config", False), ("a/b/c", True), ("c.jsonl", True),
    ("c.json", True), ("c.txt", True), ("./c", True), ("/c", True), ("/abs/c", True), ("~/c", True), ("EXISTS", True),
])
def test_file_specs_versus_hub_ids(tmp_path, spec, is_file):
    if spec == "EXISTS":
        (tmp_path / "plain").write_text("x")
        spec = str((tmp_path / "plain").relative_to(tmp_path))
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(tmp_path)
            assert cal._is_file_spec(spec) is True
        return
    assert cal._is_file_spec(spec) is is_file


def test_listed_texts_drop_blanks_and_non_strings():
    assert load_calibration_texts(["a b", "", "   ", 3, None, "c"]) == ["a b", "c"]
    assert load_calibration_texts(("x",)) == ["x"]
    with pytest.raises(UsageError, match=r"^calib: the list of calibration texts is empty$"):
        load_calibration_texts(["", " \n"])


def test_jsonl_texts_must_be_strings_and_not_all_blank(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in [{"text": "one"}, {"text": "  "}, {"text": "two"}]) + "\n")
    assert load_calibration_texts(str(good)) == ["one", "two"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "one"}) + "\n" + json.dumps({"text": 5}) + "\n")
    with pytest.raises(UsageError, match=r'^--calib .*bad.jsonl row 2: "text" must be a string$'):
        load_calibration_texts(str(bad))
    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps({"text": " "}) + "\n")
    with pytest.raises(UsageError, match=r'blank.jsonl has no texts; each line must be \{"text": "..."\}$'):
        load_calibration_texts(str(blank))
    with pytest.raises(UsageError, match=r"^--calib .*missing.jsonl: no such file"):
        load_calibration_texts(str(tmp_path / "missing.jsonl"))


def test_hub_texts_read_the_first_string_column_of_the_train_split_up_to_the_budget(tmp_path, monkeypatch):
    """``datasets`` reads a local folder the way it reads a hub id, so the reading loop runs offline."""
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    rows = [{"id": 1, "text": "abcdefghijklmno"}, {"id": 2, "text": None}, {"id": 3, "text": "  "},
            {"id": 4, "text": "p"}, {"id": 5, "text": "qrst"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # ~4 characters a token: 4 tokens = 16 characters; reading stops once the texts read reach them (15 + 1)
    assert cal._hub_texts(str(tmp_path), 4) == ["abcdefghijklmno", "p"]
    (tmp_path / "train.jsonl").write_text(json.dumps({"id": 1, "text": " "}) + "\n")
    with pytest.raises(UsageError, match=r"no text rows found; pass a local file instead: --calib FILE\.jsonl"):
        cal._hub_texts(str(tmp_path), 100)


def test_hub_ids_without_the_datasets_package_name_the_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # ``import datasets`` raises ImportError
    with pytest.raises(UsageError, match=r"^--calib org/name: reading hub datasets needs `pip install datasets`; "
                                         r"or pass a local file instead"):
        load_calibration_texts("org/name")


@pytest.mark.parametrize("config, default, limit", [
    (dict(max_position_embeddings=128), 256, 128), (dict(max_position_embeddings=128), 512, 128),
    (dict(max_position_embeddings=4096), 512, 512), (dict(n_positions=64), 256, 64),
    (dict(max_position_embeddings=None, n_positions=100), 256, 100), (dict(), 256, 256),
    (dict(max_position_embeddings=1), 256, 256), (dict(max_position_embeddings=2), 256, 2),
    (dict(max_position_embeddings=128.0), 256, 256),
])
def test_context_limit(config, default, limit):
    assert context_limit(SimpleNamespace(config=SimpleNamespace(**config)), default) == limit


def test_context_limit_default_is_the_task_sequence_length():
    assert context_limit(SimpleNamespace(config=SimpleNamespace(max_position_embeddings=10_000))) == 256


def _sleb_windows(ids, samples, seq_len, seed):
    """get_wikitext2: random.seed(seed); i = randint(0, n - seq_len - 1); ids[i:i + seq_len]."""
    random.seed(seed)
    starts = [random.randint(0, len(ids) - seq_len - 1) for _ in range(samples)]
    return [ids[i:i + seq_len] for i in starts]


def test_windows_are_slebs_seeded_random_windows():
    ids = list(range(1000, 1100))
    assert sample_windows(ids, samples=6, seq_len=10, seed=3) == _sleb_windows(ids, 6, 10, 3)
    assert sample_windows(ids, samples=4, seq_len=98, seed=0) == _sleb_windows(ids, 4, 98, 0)
    assert sample_windows(ids, samples=3, seq_len=99, seed=1) == [ids[:99]] * 3  # randint(0, 0)


@pytest.mark.parametrize("max_tokens, lengths", [
    (None, [10, 10, 10]), (30, [10, 10, 10]), (29, [10, 10, 9]), (25, [10, 10, 5]), (22, [10, 10, 2]),
    (21, [10, 10]), (20, [10, 10]), (12, [10, 2]), (1, []),
])
def test_max_tokens_truncates_the_windows(max_tokens, lengths):
    ids = list(range(100))
    full = _sleb_windows(ids, 3, 10, 7)
    got = sample_windows(ids, samples=3, seq_len=10, seed=7, max_tokens=max_tokens)
    assert [len(w) for w in got] == lengths
    assert got == [w[:n] for w, n in zip(full, lengths)]


@pytest.mark.parametrize("max_tokens, expected", [
    (None, ["abc", "def", "hi"]), (8, ["abc", "def", "hi"]), (7, ["abc", "def"]), (5, ["abc", "de"]),
    (4, ["abc"]), (3, ["abc"]),
])
def test_texts_are_split_into_windows_dropping_single_tokens(tokenizer, max_tokens, expected):
    seqs = tokenize_texts(tokenizer, ["abcdefg", "hi", "j"], max_tokens=max_tokens, seq_len=3)
    assert seqs == [tokenizer(t).input_ids for t in expected]


def test_texts_default_window_is_the_task_sequence_length(tokenizer):
    seqs = tokenize_texts(tokenizer, ["x" * 600])
    assert [len(s) for s in seqs] == [256, 256, 88]


def test_pack_sorts_by_length_and_fills_batches_up_to_the_token_budget(tokenizer):
    rows = [([11, 12, 13], [False, True, True], 1), ([21, 22, 23, 24, 25], [False, True, False, True, True], 2),
            ([31, 32], [False, True], 3), ([41, 42, 43, 44, 45], [False] * 5, 4)]
    first, second = pack(tokenizer, rows, batch_tokens=10)  # 5 x 2 fits in 10; 5 x 3 does not
    assert first.input_ids.tolist() == [[21, 22, 23, 24, 25], [41, 42, 43, 44, 45]]
    assert first.groups.tolist() == [2, 4] and first.attention_mask.tolist() == [[1] * 5] * 2
    assert first.loss_mask.tolist() == [[False, True, False, True, True], [False] * 5]
    assert second.input_ids.tolist() == [[11, 12, 13], [31, 32, 0]]  # <pad> = 0
    assert second.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert second.loss_mask.tolist() == [[False, True, True], [False, True, False]]
    assert second.groups.tolist() == [1, 3]
    for b in (first, second):
        assert b.input_ids.dtype == b.attention_mask.dtype == b.groups.dtype == torch.long
        assert b.loss_mask.dtype == torch.bool
    assert [len(b.groups) for b in pack(tokenizer, rows, batch_tokens=9)] == [1, 1, 2]
    assert [len(b.groups) for b in pack(tokenizer, rows, batch_tokens=15)] == [3, 1]
    assert [len(b.groups) for b in pack(tokenizer, rows)] == [4]
    assert pack(tokenizer, []) == []


@pytest.mark.parametrize("pad, eos, expected", [(5, 7, 5), (0, 7, 0), (None, 7, 7), (None, None, 0)])
def test_pack_pads_with_pad_then_eos_then_zero(pad, eos, expected):
    tok = SimpleNamespace(pad_token_id=pad, eos_token_id=eos)
    (batch,) = pack(tok, [([1, 2, 3], [False, True, True], 0), ([4, 5], [False, True], 0)])
    assert batch.input_ids[1].tolist() == [4, 5, expected]


def test_listed_texts_become_batches_scoring_all_but_the_first_token(llama, tokenizer):
    texts = ["abcdefgh", "", "ijk", "l"]
    batches, info = calibration_batches(llama, tokenizer, texts, seed=4)
    assert info == {"calib": "list of 4 texts", "calib_seed": 4, "calib_mode": "texts", "calib_texts": 3,
                    "calib_samples": 2, "calib_seq_len": 128, "calib_tokens": 11}
    (batch,) = batches
    assert batch.input_ids.tolist() == [tokenizer("abcdefgh").input_ids, tokenizer("ijk").input_ids + [0] * 5]
    assert batch.loss_mask.tolist() == [[False] + [True] * 7, [False, True, True] + [False] * 5]
    assert batch.groups.tolist() == [0, 0]
    again = make_batches(tokenizer, texts)
    assert len(again) == 1 and torch.equal(again[0].input_ids, batch.input_ids)
    assert torch.equal(again[0].loss_mask, batch.loss_mask) and again[0].groups.tolist() == [0, 0]
    assert [b.input_ids.tolist() for b in make_batches(tokenizer, ["abcdefg"], seq_len=3, max_tokens=5)] == [
        [tokenizer("abc").input_ids, tokenizer("de").input_ids + [0]]]


def test_listed_texts_are_capped_and_split_at_the_model_context(llama, tokenizer):
    _, info = calibration_batches(llama, tokenizer, ["abcdefgh", "ijk"], max_tokens=5)
    assert (info["calib_samples"], info["calib_tokens"]) == (1, 5)
    batches, info = calibration_batches(llama, tokenizer, ["x" * 200])  # context 128, below the asked 512
    assert info["calib_tokens"] == 200 and info["calib_samples"] == 2
    assert sorted(int(n) for b in batches for n in b.attention_mask.sum(1)) == [72, 128]


def test_no_text_of_two_tokens_is_refused(llama, tokenizer):
    with pytest.raises(UsageError, match="^the calibration set has no text with at least two tokens$"):
        calibration_batches(llama, tokenizer, ["a", "b"])
    with pytest.raises(UsageError, match="^the calibration set has no text with at least two tokens$"):
        make_batches(tokenizer, ["a", "b"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(samples=-1), r"\(got -1 and 512\)"), (dict(seq_len=1), r"\(got 64 and 1\)"),
    (dict(samples=-2, seq_len=-3), r"\(got -2 and -3\)"), (dict(samples=0), r"\(got 0 and 512\)"),
    (dict(seq_len=0), r"\(got 64 and 0\)"),
])
def test_bad_sizes_are_refused(llama, tokenizer, kwargs, message):
    with pytest.raises(UsageError, match=r"^--calib-samples must be at least 1 and --calib-seq-len at least 2 "
                                         + message):
        calibration_batches(llama, tokenizer, ["abc"], **kwargs)


def _corpus(tmp_path, n_lines):
    path = tmp_path / f"corpus{n_lines}.jsonl"
    path.write_text("".join(json.dumps({"text": f"Line {i} of a corpus."}) + "\n" for i in range(n_lines)))
    return path


def test_a_corpus_gives_slebs_windows_of_the_joined_texts(tmp_path, llama, tokenizer):
    path = _corpus(tmp_path, 30)
    joined = tokenizer("\n\n".join(f"Line {i} of a corpus." for i in range(30)), add_special_tokens=False).input_ids
    batches, info = calibration_batches(llama, tokenizer, str(path), samples=5, seq_len=40, seed=2)
    assert info == {"calib": str(path), "calib_seed": 2, "calib_mode": "random_windows", "calib_samples": 5,
                    "calib_seq_len": 40, "calib_corpus_tokens": len(joined), "calib_tokens": 200}
    got = sorted(row.tolist() for b in batches for row in b.input_ids)
    assert got == sorted(_sleb_windows(joined, 5, 40, 2))
    assert all(b.loss_mask[:, 0].sum() == 0 and b.loss_mask[:, 1:].all() for b in batches)
    _, capped = calibration_batches(llama, tokenizer, str(path), samples=5, seq_len=40, seed=2, max_tokens=90)
    assert capped["calib_samples"] == 3 and capped["calib_tokens"] == 90
    batches, info = calibration_batches(llama, tokenizer, str(path), samples=5, seq_len=40)
    assert info["calib_seed"] == 0
    assert sorted(row.tolist() for b in batches for row in b.input_ids) == sorted(_sleb_windows(joined, 5, 40, 0))


def test_the_smallest_sizes_are_accepted(tmp_path, llama, tokenizer):
    batches, info = calibration_batches(llama, tokenizer, str(_corpus(tmp_path, 3)), samples=1, seq_len=2, seed=1)
    assert (info["calib_samples"], info["calib_seq_len"], info["calib_tokens"]) == (1, 2, 2)
    assert [b.input_ids.shape for b in batches] == [(1, 2)]


def test_windows_longer_than_the_context_shrink_and_grow_in_number(tmp_path, llama, tokenizer):
    path = _corpus(tmp_path, 40)
    _, info = calibration_batches(llama, tokenizer, str(path), samples=3, seq_len=300, seed=0)
    assert info["calib_seq_len"] == 128 and info["calib_samples"] == math.ceil(3 * 300 / 128) == 8
    assert info["calib_tokens"] == 8 * 128
    _, info = calibration_batches(llama, tokenizer, str(path), samples=3, seq_len=128, seed=0)
    assert (info["calib_seq_len"], info["calib_samples"]) == (128, 3)


def test_a_corpus_must_be_longer_than_one_window_plus_one_token(tmp_path, llama, tokenizer):
    """Exactly seq_len + 1 tokens is used as a text (one window); seq_len + 2 is sampled."""
    for extra, mode in ((1, "texts"), (2, "random_windows")):
        path = tmp_path / f"c{extra}.jsonl"
        path.write_text(json.dumps({"text": "x" * (10 + extra)}) + "\n")
        batches, info = calibration_batches(llama, tokenizer, str(path), samples=2, seq_len=10, seed=0)
        assert info["calib_mode"] == mode
        assert info.get("calib_corpus_tokens", 10 + extra) == 10 + extra


class _CharTokenizer:
    """A stand-in tokenizer: one id per character (its code point), a leading 999 as its special token."""
    name_or_path = ""

    def __call__(self, text, add_special_tokens=True):
        return SimpleNamespace(input_ids=[999] * add_special_tokens + [ord(c) for c in text])


def test_the_corpus_is_one_stream_without_special_tokens_cached_per_tokenizer(monkeypatch, tokenizer):
    monkeypatch.setattr(cal, "_TOKEN_CACHE", {})
    byte_ids = cal._corpus_ids(tokenizer, ["ab", "cd"], "k")
    assert byte_ids == tokenizer("ab\n\ncd", add_special_tokens=False).input_ids
    assert cal._corpus_ids(_CharTokenizer(), ["ab", "cd"], "k") == [97, 98, 10, 10, 99, 100]


def test_the_corpus_is_tokenized_once_per_source(tmp_path, tokenizer, monkeypatch):
    calls = []
    real = type(tokenizer).__call__

    def counting(self, *args, **kwargs):
        calls.append(args[0])
        return real(self, *args, **kwargs)
    monkeypatch.setattr(type(tokenizer), "__call__", counting)
    monkeypatch.setattr(cal, "_TOKEN_CACHE", {})
    first = cal._corpus_ids(tokenizer, ["ab", "cd"], "k1")
    assert first == real(tokenizer, "ab\n\ncd", add_special_tokens=False).input_ids
    assert cal._corpus_ids(tokenizer, ["ab", "cd"], "k1") is first and len(calls) == 1
    other = cal._corpus_ids(tokenizer, ["ef"], "k2")
    assert other == real(tokenizer, "ef", add_special_tokens=False).input_ids and len(calls) == 2
    assert list(cal._TOKEN_CACHE.values()) == [other], "one corpus is cached at a time"
