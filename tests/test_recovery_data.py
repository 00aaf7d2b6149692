"""Recovery's prompt sources (recovery/data.py): files parsed line by line, prompts rendered and completed,
questions compared in canonical form, examples tokenized, each checked against text and ids written here."""
from __future__ import annotations

import json

import pytest

from common import make_tokenizer
from prunescope.errors import UsageError
from prunescope.recovery import data
from prunescope.tasks.spec import TASKS, Item, Task

TASK = "recovery_data_test_sums"


def _items(n, seed, split):
    """calib asks 3+4, 1+2, 5*6; eval asks 4 + 3 and 2*2 (3+4 in canonical form is shared)."""
    qs = ["3+4", "1+2", "5*6"] if split == "calib" else ["4 + 3", "2*2"]
    out = [Item(id=f"{split}{i}", prompt=f"Q {q}=", gold=str(eval(q)), target=" " + str(eval(q)),  # noqa: S307
                meta={"key": q}) for i, q in enumerate(qs)]
    return out[:n] if n else out


if TASK not in TASKS:
    TASKS.register(TASK, lambda: Task(name=TASK, kind="generate", description="sums", make_items=_items,
                                      stop=["\n", "Q"], max_new_tokens=3))


def _write(tmp_path, lines, name="p.jsonl"):
    path = tmp_path / name
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_prompt_file_rows(tmp_path):
    path = _write(tmp_path, [
        {"prompt": "Say hi", "response": "hi"},
        "",  # blank lines are skipped
        {"id": "q7", "question": "2+2?", "answer": "4"},
        {"instruction": "List two colours", "completion": "red, blue"},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "x?"},
                      {"role": "assistant", "content": "y", "extra": 1}]},
        {"messages": [{"role": "user", "content": "open"}]},
    ])
    ps = data.read_prompt_file(path)
    assert [p.id for p in ps] == ["1", "q7", "4", "5", "6"]  # line numbers unless an id is given
    assert [p.messages for p in ps] == [[{"role": "user", "content": "Say hi"}], [{"role": "user", "content": "2+2?"}],
                                        [{"role": "user", "content": "List two colours"}],
                                        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "x?"}],
                                        [{"role": "user", "content": "open"}]]
    assert [p.response for p in ps] == ["hi", "4", "red, blue", "y", None]
    assert all(p.chat and p.task is None and p.stop == [] and p.max_new_tokens(9) == 9 for p in ps)
    assert ps[0].check("hi") is None


@pytest.mark.parametrize("line, message", [
    ("{not json", "p.jsonl:1: not valid JSON (Expecting property name enclosed in double quotes); each line must be "
                  "one JSON object"),
    ('[1, 2]', "p.jsonl:1: expected a JSON object with 'prompt' or 'messages', got list"),
    ('{"prompt": "a", "response": 3}', "p.jsonl:1: 'response' must be a string"),
    ('{"prompt": "   "}', "p.jsonl:1: needs a non-empty string 'prompt' (or 'messages'); keys found: prompt"),
    ('{}', "p.jsonl:1: needs a non-empty string 'prompt' (or 'messages'); keys found: none"),
    ('{"messages": []}', "p.jsonl:1: 'messages' must be a non-empty list of {role, content} strings"),
    ('{"messages": [{"role": "user", "content": 5}]}',
     "p.jsonl:1: 'messages' must be a non-empty list of {role, content} strings"),
    ('{"messages": [{"role": "assistant", "content": "x"}]}', "p.jsonl:1: 'messages' has no turn before the assistant's"),
])
def test_prompt_file_errors_name_file_and_line(tmp_path, line, message):
    path = _write(tmp_path, [line])
    with pytest.raises(UsageError) as err:
        data.read_prompt_file(path)
    assert str(err.value) == f"{path.parent}/{message}"


def test_empty_prompt_file(tmp_path):
    path = _write(tmp_path, ["", "  "])
    with pytest.raises(UsageError, match=r"is empty; it needs one JSON object per line"):
        data.read_prompt_file(path)


def test_load_prompts_from_a_file_keeps_the_first_num(tmp_path):
    path = _write(tmp_path, [{"prompt": f"q{i}"} for i in range(5)])
    assert [p.id for p in data.load_prompts(str(path), num=2)] == ["1", "2"]
    assert len(data.load_prompts(str(path))) == 5
    assert data.prompt_source_kind(str(path)) == "general" and data.prompt_source_kind(TASK) == "task-specific"
    with pytest.raises(UsageError, match=r"^--prompts .*missing\.jsonl: no such file$"):
        data.load_prompts(str(tmp_path / "missing.jsonl"))
    with pytest.raises(UsageError, match=r"^--prompts ./nowhere: no such file$"):
        data.load_prompts("./nowhere")
    with pytest.raises(UsageError, match=r"^--prompts 'nothing-like-this' is not a file, a task or a hub dataset id"):
        data.load_prompts("nothing-like-this")


def test_task_prompts_leave_out_evaluated_questions():
    stats = {}
    ps = data.load_prompts(TASK, stats=stats)
    assert [p.id for p in ps] == [f"{TASK}/calib1", f"{TASK}/calib2"]  # 3+4 is asked in eval as 4 + 3
    assert stats == {"overlap_with_eval": 1, "disjoint_from": [TASK]}
    p = ps[0]
    assert not p.chat and p.response == " 3" and p.stop == ["\n", "Q"] and p.max_new_tokens(99) == 3
    tok = make_tokenizer()
    assert p.render(tok) == "Q 1+2="  # rendered as evaluation renders it: no chat template for this task
    assert p.completion(" 3", tok) == " 3\n" and p.completion(" 3", tok, end=False) == " 3"
    assert p.check(" 3 ") is True and p.check("3") is True and p.check("4") is False  # target, stripped


def test_task_prompts_with_num_and_all_overlapping():
    # num takes the first calib items; the only one (3+4) is evaluated -> nothing left: an error
    with pytest.raises(UsageError, match=r"every calibration question also appears .* \(--prompts self-instruct\)"):
        data.load_prompts(TASK, num=1)
    assert [p.id for p in data.load_prompts(TASK, num=2)] == [f"{TASK}/calib1"]


def test_check_uses_the_task_checker_first():
    item = Item(id="i", prompt="p", gold="7", target=" 7")
    with_check = Task(name="c", kind="generate", description="", make_items=_items, check=lambda it, o: o == "ok")
    assert data.Prompt(id="a", task=with_check, item=item).check("ok") is True
    assert data.Prompt(id="a", task=with_check, item=item).check(" 7") is False
    batch = Task(name="c", kind="generate", description="", make_items=_items,
                 check_all=lambda items, outs: [{"correct": outs[0] == "yes", "why": "-"}])
    assert data.Prompt(id="a", task=batch, item=item).check("yes") is True
    assert data.Prompt(id="a", task=batch, item=item).check("no") is False
    plain = Task(name="c", kind="generate", description="", make_items=_items,
                 check_all=lambda items, outs: [outs[0] == "yes"])
    assert data.Prompt(id="a", task=plain, item=item).check("yes") is True


def test_completion_of_chat_prompts():
    tok = make_tokenizer()  # chat template: <|role|>\ncontent\n per turn
    p = data.Prompt(id="a", messages=[{"role": "user", "content": "hi"}])
    assert p.render(tok) == "<|user|>\nhi\n<|assistant|>\n"
    assert p.completion("yo", tok) == "yo\n" and p.completion("yo", tok, end=False) == "yo"
    tok.chat_template = None
    assert p.render(tok) == "hi\n" and p.completion("yo", tok) == "yo</s>"
    no_stop = Task(name="c", kind="generate", description="", make_items=_items, stop=[])
    q = data.Prompt(id="b", task=no_stop, item=Item(id="i", prompt="p", gold="1", target="1"))
    assert q.completion("1", tok) == "1</s>" and q.stop == []


def test_question_text():
    assert data.question_text(Item(id="i", prompt="full", gold=1, target="1", meta={"key": "3+4"})) == "3+4"
    assert data.question_text(Item(id="i", prompt="full", gold=1, target="1", meta={"question": "why?"})) == "why?"
    assert data.question_text(Item(id="i", prompt="full", gold=1, target="1", meta={"expression": "1-1"})) == "1-1"
    assert data.question_text(Item(id="i", prompt="full", gold=1, target="1", meta={"key": 5})) == "full"
    assert data.question_text(Item(id="i", prompt="full", gold=1, target="1")) == "full"


@pytest.mark.parametrize("text, canonical", [
    ("3 + 4 =", "expr:(3+4)"), ("4+3", "expr:(3+4)"), ("2 x 3", "expr:(2*3)"), ("3×2?", "expr:(2*3)"),
    ("1 + (2 + 3)", "expr:(1+2+3)"), ("7 - 3", "expr:(7-3)"), ("-2 + 1", "expr:((-2)+1)"),
    ("8 / 2", "expr:(8/2)"), ("What  IS 2+2? ", "whatis2+2"), ("((", "(("),
])
def test_canonical_question_by_hand(text, canonical):
    assert data.canonical_question(text) == canonical


def test_canonical_expression_other_operators():
    import ast
    form = lambda s: data._canonical_expr(ast.parse(s, mode="eval").body)  # noqa: E731
    assert form("7 // 2") == "(7//2)" and form("7 % 2") == "(7%2)" and form("2 ** 3") == "(2**3)"
    assert form("2 << 1") == "(2?1)"
    with pytest.raises(ValueError, match="not arithmetic"):
        form("a + 1")


def test_tokenize_example_masks_the_context_and_cuts():
    tok = make_tokenizer()
    p = data.Prompt(id="a", messages=[{"role": "user", "content": "hi"}])
    ctx = tok("<|user|>\nhi\n<|assistant|>\n", add_special_tokens=False)["input_ids"]
    comp = tok("ok\n", add_special_tokens=False)["input_ids"]
    ex = data.tokenize_example(p, "ok", tok, 512)
    extra = {"context_len": len(ctx), "stop": []}  # where on-policy sampling starts, and where it stops
    assert ex == {"input_ids": ctx + comp, "labels": [-100] * len(ctx) + comp, **extra}
    cut = data.tokenize_example(p, "ok", tok, len(ctx) + 1)
    assert cut == {"input_ids": ctx + comp[:1], "labels": [-100] * len(ctx) + comp[:1], **extra}
    assert data.tokenize_example(p, "ok", tok, len(ctx)) is None  # no response token left
    unended = data.tokenize_example(p, "ok", tok, 512, end=False)
    assert unended["input_ids"] == ctx + comp[:-1]


OTHER = "recovery_data_test_other"
if OTHER not in TASKS:
    TASKS.register(OTHER, lambda: Task(name=OTHER, kind="generate", description="other", make_items=lambda n, seed, split: [
        Item(id="o0", prompt="Q 2+1=", gold="3", target=" 3", meta={"key": "2+1"})]))


def test_shipped_prompts_sampled_by_seed():
    allp = data.load_prompts("self-instruct")
    assert len(allp) == 427
    a, b = data.load_prompts("self-instruct", num=5, seed=1), data.load_prompts("self-instruct", num=5, seed=2)
    assert len(a) == 5 and [p.id for p in a] == [p.id for p in data.load_prompts("self-instruct", num=5, seed=1)]
    assert [p.id for p in a] != [p.id for p in b] and [p.id for p in a] != [p.id for p in allp[:5]]
    assert len(data.load_prompts("self-instruct", num=427)) == 427 and len(data.load_prompts("self-instruct", num=999)) == 427


def test_path_like_specs_that_do_not_exist(tmp_path):
    for spec in ("prompts.json", "prompts.jsonl", "/no/such/dir/x", "~/no-such-prompts-here"):
        with pytest.raises(UsageError, match=r"^--prompts .*: no such file$"):
            data.load_prompts(spec)
    from prunescope.tasks import task_names
    with pytest.raises(UsageError) as err:
        data.load_prompts("nothing-like-this")
    assert str(err.value).endswith("tasks: " + ", ".join(task_names()))


def test_disjoint_from_another_task():
    stats = {}
    ps = data.load_prompts(TASK, disjoint_from=[OTHER, TASK], stats=stats)
    assert [p.id for p in ps] == [f"{TASK}/calib2"]  # 3+4 (own eval) and 1+2 (= the other task's 2+1) left out
    assert stats == {"overlap_with_eval": 2, "disjoint_from": [TASK, OTHER]}


def test_rendering_and_checking_use_the_item_and_tokenizer():
    tok = make_tokenizer()
    item = Item(id="i", prompt="What?", gold="7", target=" 7")
    chat = Task(name="c", kind="generate", description="", make_items=_items, use_chat_template=True,
                check=lambda it, o: o.strip() == it.gold)
    p = data.Prompt(id="a", task=chat, item=item)
    assert p.render(tok) == "<|user|>\nWhat?\n<|assistant|>\n" and p.check("7 ") is True and p.check("8") is False
    batch = Task(name="c", kind="generate", description="", make_items=_items,
                 check_all=lambda items, outs: [outs[0] == items[0].gold])
    assert data.Prompt(id="a", task=batch, item=item).check("7") is True
    two = data.Prompt(id="b", messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}])
    tok.chat_template = None
    assert two.render(tok) == "s\nu\n"
    tok.eos_token = None
    assert two.completion("r", tok) == "r"
    no_stop = Task(name="c", kind="generate", description="", make_items=_items, stop=[])
    assert data.Prompt(id="c", task=no_stop, item=item).completion("r", tok) == "r"


def test_words_with_x_are_not_products():
    assert data.canonical_question("Box?") == "box" and data.canonical_question("3x4") == "expr:(3*4)"


def test_completion_tokens_carry_no_special_tokens():
    from tokenizers.processors import TemplateProcessing
    tok = make_tokenizer()
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    p = data.Prompt(id="a", messages=[{"role": "user", "content": "hi"}])
    ex = data.tokenize_example(p, "ok", tok, 512)
    n_ctx = ex["labels"].count(-100)
    assert ex["input_ids"][0] == 1 and 1 not in ex["input_ids"][n_ctx:]  # BOS once, before the context only
