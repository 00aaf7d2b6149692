"""Task plumbing checked by hand: reading JSONL (each error names the file and line), dataset folders read by
``datasets`` (offline, from a local folder), what a task renders with and without a chat template, whether a
tokenizer adds BOS, and the word-copying task's items."""
import json
import sys

import pytest

from common import CHAT_TEMPLATE, make_tokenizer
from prunescope.errors import UsageError
from prunescope.tasks import Item, Task, get_task
from prunescope.tasks import copying
from prunescope.tasks.data import load_hub, read_jsonl
from prunescope.tasks.spec import adds_bos
from prunescope.tasks.user import load_user_task


def test_read_jsonl_rows_and_errors(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('\n{"q": 1, "a": 2}\n  \n{"q": 3, "a": 4, "x": 5}\n')
    assert read_jsonl(path, required=("q", "a")) == [{"q": 1, "a": 2}, {"q": 3, "a": 4, "x": 5}]
    cases = [('{"q": 1, "a": 0}\n{"q": 2\n', f"{path} line 2: not valid JSON (Expecting ',' delimiter); each line must be one "
                                      "JSON object"),
             ('\n[1, 2]\n', f"{path} line 2: expected a JSON object, got list"),
             ('{"q": 1}\n', f"{path} line 1: missing key(s) 'a'; each line needs 'q', 'a'"),
             ('{"x": 1}\n', f"{path} line 1: missing key(s) 'q', 'a'; each line needs 'q', 'a'"),
             ('\n\n', f"{path} has no rows")]
    for text, message in cases:
        path.write_text(text)
        with pytest.raises(UsageError) as err:
            read_jsonl(path, required=("q", "a"))
        assert str(err.value) == message
    with pytest.raises(UsageError) as err:
        read_jsonl(tmp_path / "none.jsonl", flag="--rows")
    assert str(err.value) == f"--rows {tmp_path / 'none.jsonl'}: no such file; check the path (JSONL, one object per line)"
    with pytest.raises(UsageError, match=r"^--data "):
        read_jsonl(tmp_path / "none.jsonl")
    path.write_text('{"é": "ü"}\n')
    assert read_jsonl(path) == [{"é": "ü"}]


@pytest.fixture
def dataset_folder(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "ds"
    folder.mkdir()
    rows = [{"c": f"Land{i}", "opts": ["x", "y"], "ans": i % 2} for i in range(12)]
    (folder / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "test.jsonl").write_text("".join(json.dumps(dict(r, c=r["c"] + "t")) + "\n" for r in rows))
    return folder, rows


def test_load_hub_reads_a_dataset_folder_and_names_a_missing_split(dataset_folder):
    folder, rows = dataset_folder
    assert load_hub(str(folder), None, "validation", how_to_fix="fix") == rows
    with pytest.raises(UsageError) as err:
        load_hub(str(folder), None, "train", how_to_fix="pass a file")
    assert str(err.value).startswith(f"dataset {folder} (train) is not reachable (Unknown split \"train\"") and \
        str(err.value).endswith("); pass a file")  # datasets' own reason in the middle


def test_user_task_reads_a_dataset_folder_split(dataset_folder, tmp_path):
    folder, rows = dataset_folder
    path = tmp_path / "h.yaml"
    path.write_text(f"name: h\nkind: multiple_choice\nhub: {{path: {folder}, split: validation}}\nprompt: '{{c}}'\n"
                    "choices: opts\ngold: ans\n")
    prompts = [it.prompt for s in ("eval", "calib") for it in load_user_task(path).items(None, split=s)]
    assert sorted(prompts) == sorted(r["c"] for r in rows)
    path.write_text(f"name: h\nkind: multiple_choice\nhub: {{path: {folder}}}\nprompt: '{{c}}'\n"
                    "choices: opts\ngold: ans\n")
    prompts = [it.prompt for s in ("eval", "calib") for it in load_user_task(path).items(None, split=s)]
    assert sorted(prompts) == sorted(r["c"] + "t" for r in rows)  # the default split is test
    path.write_text(f"name: h\nkind: multiple_choice\nhub: {{path: {folder}, name: nope}}\nprompt: '{{c}}'\n"
                    "choices: opts\ngold: ans\n")
    with pytest.raises(UsageError, match="BuilderConfig 'nope' not found"):  # the configuration name reaches datasets
        load_user_task(path)


def test_without_datasets_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(UsageError) as err:
        load_hub("org/set", None, "test", how_to_fix="pass --data FILE")
    assert str(err.value) == "the hub dataset org/set needs the 'datasets' package (pip install datasets); or pass --data FILE"


def _task(**kw):
    return Task(name="r", kind="generate", description="", make_items=lambda n, seed, split: [], **kw)


def test_render_with_and_without_the_chat_template():
    tok = make_tokenizer()
    assert tok.chat_template == CHAT_TEMPLATE  # "<|role|>\ncontent\n" per turn, then "<|assistant|>\n"
    item = Item(id="i", prompt="2 + 2 =", gold=4, target=" 4")
    chat, plain = _task(use_chat_template=True), _task()
    assert chat.render(item, tok) == "<|user|>\n2 + 2 =\n<|assistant|>\n"
    assert plain.render(item, tok) == "2 + 2 =" and chat.render(item, None) == "2 + 2 ="
    assert plain.render(item, tok, chat=True) == "<|user|>\n2 + 2 =\n<|assistant|>\n"
    assert chat.render(item, tok, chat=False) == "2 + 2 ="
    turns = Item(id="i", prompt="ignored", gold=4, target=" 4",
                 meta={"messages": [{"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"},
                                    {"role": "user", "content": "2+2"}]})
    assert chat.render(turns, tok) == "<|user|>\n1+1\n<|assistant|>\n2\n<|user|>\n2+2\n<|assistant|>\n"
    bare = make_tokenizer()
    bare.chat_template = None
    assert chat.render(item, bare) == "2 + 2 =" and plain.render(item, bare, chat=True) == "2 + 2 ="


def test_task_defaults_and_item_checks():
    t = _task()
    assert (t.stop, t.max_new_tokens, t.use_chat_template, t.chance, t.pair, t.matched) == (["\n"], 16, False, None,
                                                                                           None, True)
    assert Item(id="a", prompt="", gold=0, target="").meta == {} and Item(id="a", prompt="", gold=0, target="").meta \
        is not Item(id="b", prompt="", gold=0, target="").meta
    bad = Item(id="q1", prompt="x", gold=0, target=" 1", choices=[" 1", " 1"])
    seen = []
    task = Task(name="dup", kind="multiple_choice", description="",
                make_items=lambda n, seed, split: seen.append((n, seed, split)) or [bad])
    with pytest.raises(UsageError, match=r"^task dup, item q1: "):
        task.items(3, seed=2, split="calib")
    assert seen == [(3, 2, "calib")]


def test_adds_bos():
    from tokenizers import processors

    assert adds_bos(None) is None
    tok = make_tokenizer()  # has <s> but does not add it
    assert adds_bos(tok) is False
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    assert tok("a")["input_ids"][0] == 1 and adds_bos(tok) is True

    class NoBos:
        bos_token_id = None

    class Bare:  # not even the attribute
        pass
    assert adds_bos(NoBos()) is False and adds_bos(Bare()) is False


def test_copy_words_items_by_hand():
    task = get_task("copy_words_gen")
    assert task.name == "copy_words_gen"
    assert (task.kind, task.stop, task.max_new_tokens, task.family) == ("generate", ["\n"], 24, "copy_words")
    assert task.description == "copy 4 words, 5-shot"
    items = task.items(20, seed=1)
    assert [it.id for it in items] == [f"copy_words-eval-1-{i}" for i in range(20)]
    for it in items:
        lines = it.prompt.split("\n")
        assert len(lines) == 12 and lines[-1] == "Output:" and lines[-2] == f"Copy: {it.gold}"
        for copy, out in zip(lines[0:10:2], lines[1:10:2]):  # five shots, each copied verbatim
            assert copy.startswith("Copy: ") and out == "Output: " + copy[len("Copy: "):]
            assert len(set(copy.split()[1:])) == 4 and set(copy.split()[1:]) <= set(copying.WORDS)
        words = it.gold.split(" ")
        assert len(words) == len(set(words)) == 4 and set(words) <= set(copying.WORDS)
        assert it.target == " " + it.gold and it.meta["key"] == it.gold
        assert task.check(it, f"  {words[0]}  {' '.join(words[1:])} \n") and not task.check(it, " ".join(words[::-1]))
        assert not task.check(it, " ".join(words[:3]))
    assert len({it.gold for it in items}) == 20
    # the questions come from the family's own evaluation partition (sha256 of "copy_words\0<words>")
    import hashlib

    for it in items:
        digest = hashlib.sha256(f"copy_words\x00{it.gold}".encode()).digest()
        assert int.from_bytes(digest[:8], "big") % 4 != 0


def test_register_task_uses_the_name(monkeypatch):
    from prunescope.tasks import TASKS, register_task

    monkeypatch.setattr(TASKS, "_items", dict(TASKS._items))
    register_task("made_up_task")(lambda: _task())
    assert get_task("made_up_task").name == "r"


def test_render_with_a_tokenizer_without_the_attribute():
    class Plain:  # no chat_template attribute at all
        pass
    item = Item(id="i", prompt="p", gold=0, target="")
    assert _task(use_chat_template=True).render(item, Plain()) == "p"
