"""``recover``: heal a pruned model and write the adapter, the merged checkpoint and the training log."""
from __future__ import annotations

import gc
import logging
import shutil
from pathlib import Path

import torch

from prunescope.errors import UsageError
from prunescope.io import read_json, write_json
from prunescope.recovery.config import RecoverConfig
from prunescope.recovery.data import load_prompts, prompt_source_kind, tokenize_example
from prunescope.recovery.generation import CACHE_FILE, cache_key, self_generate
from prunescope.recovery.loop import CHECKPOINT, TRAIN_LOG, train
from prunescope.recovery.methods import prepare, restore_dtype

log = logging.getLogger(__name__)

SUMMARY = "recover.json"
# "student": the saved cut a study loads in 4-bit for QLoRA, beside the run's own files.
_RUN_FILES = {CHECKPOINT, TRAIN_LOG, CACHE_FILE, "adapter", "merged", SUMMARY, "student"}


def _is_cache(name: str) -> bool:
    return name == CACHE_FILE or name.startswith(CACHE_FILE + ".partial")


def model_source(model) -> str | None:
    """Where ``model`` was loaded from (what load_model recorded, else the transformers name)."""
    return getattr(model, "prunescope_source", None) or getattr(model, "name_or_path", None) or \
        getattr(model.config, "_name_or_path", None) or None


def pruned_metadata(model) -> dict:
    """``prunescope.json`` of the folder ``model`` was loaded from ({} when there is none)."""
    source = model_source(model)
    if source and (Path(source) / "prunescope.json").is_file():
        return read_json(Path(source) / "prunescope.json")
    return {}


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _prepare_out(out: Path, *, overwrite: bool, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder; pass a folder path")
    present = {p.name for p in out.iterdir()} if out.is_dir() else set()
    foreign = {n for n in present - _RUN_FILES if not _is_cache(n)}
    if foreign and not overwrite:
        raise UsageError(f"--out {out} holds files that are not from a recovery run ({sorted(foreign)[0]}); "
                         f"pass --overwrite to replace them or choose another folder")
    if overwrite:
        # The teacher-response cache stays: it is keyed by teacher, prompts and decoding settings.
        for name in (n for n in present if not _is_cache(n)):
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    elif not resume and CHECKPOINT in present:
        raise UsageError(f"--out {out} holds a recovery checkpoint; leave out --no-resume to continue it, or pass "
                         f"--overwrite to start over")
    out.mkdir(parents=True, exist_ok=True)


def _resolve_teacher(model, teacher, teacher_tokenizer, tokenizer, config):
    """(teacher name, teacher or a loader, teacher tokenizer). Without a teacher, the base model named in
    the pruned folder's prunescope.json is used."""
    if teacher is not None:
        return model_source(teacher) or "teacher", teacher, teacher_tokenizer or tokenizer
    if not config.needs_teacher:
        return None, None, None
    base = pruned_metadata(model).get("base_model")
    if not base:
        why = "--data self" if config.data == "self" else f"--loss {config.loss}"
        raise UsageError(f"{why} needs the unpruned model as teacher: pass --teacher BASE (the model before "
                         f"pruning); it defaults to base_model in the pruned folder's prunescope.json, and "
                         f"{model_source(model) or 'this model'} has none")
    log.info("teacher: %s (base_model of the pruned model's prunescope.json)", base)

    def load():
        from prunescope.models import load_model
        weight = next(model.parameters())
        dtype = weight.dtype if weight.is_floating_point() else torch.bfloat16  # a 4-bit student: bf16 teacher
        return load_model(base, dtype=dtype, device=str(weight.device))
    return base, load, None


def check_same_tokenizer(tokenizer, teacher_tokenizer) -> None:
    """Distillation compares distributions token by token, so the vocabularies must be identical."""
    if teacher_tokenizer is None or teacher_tokenizer is tokenizer:
        return
    if teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise UsageError(f"--loss kd/mix needs teacher and student to share a tokenizer, but their vocabularies "
                         f"differ ({len(teacher_tokenizer)} vs {len(tokenizer)} tokens); use --loss sft, or a "
                         f"teacher from the same family")


def describe_data(stats: dict) -> str:
    """One readable line for the recovery data record: label, prompt source and counts."""
    parts = [f"{stats.get('label', 'recovery')} on {stats.get('prompt_source', '?')}",
             f"{stats.get('examples', stats.get('prompts', '?'))} examples"]
    decoding = stats.get("decoding")
    if isinstance(decoding, dict):
        parts.append(", ".join(f"{k} {v}" for k, v in decoding.items()))
    if stats.get("truncated"):
        parts.append(f"{stats['truncated']} cut by the length limit ({stats.get('truncated_policy', 'keep')})")
    if stats.get("overlap_with_eval"):
        parts.append(f"{stats['overlap_with_eval']} prompts dropped as evaluated questions")
    return "; ".join(parts)


def build_training_examples(prompts, tokenizer, config, *, out: Path, teacher_name=None, teacher=None,
                            teacher_tokenizer=None, stats: dict | None = None, rank: int = 0, world: int = 1,
                            barrier=None) -> tuple[list[dict], dict]:
    """Tokenized examples plus data statistics (prompts, generated, kept, dropped as incorrect, cut by
    the length limit or too long)."""
    stats = {**(stats or {}), "prompts": len(prompts)}
    if config.data == "self":
        key = cache_key(teacher=teacher_name, prompts=config.prompts, num_prompts=config.num_prompts, seed=config.seed,
                        max_new_tokens=config.gen_max_new_tokens, task_data=config.prompts_data,
                        decoding=config.gen_decoding, temperature=config.gen_temperature, top_p=config.gen_top_p)
        rows = self_generate(prompts, teacher, teacher_tokenizer, cache_path=out / CACHE_FILE, key=key,
                             teacher_name=teacher_name, max_new_tokens=config.gen_max_new_tokens,
                             batch_size=config.gen_batch_size, decoding=config.gen_decoding,
                             temperature=config.gen_temperature, top_p=config.gen_top_p, seed=config.seed,
                             rank=rank, world=world, barrier=barrier)
        del teacher
        checked = [r for r in rows if r["correct"] is not None]
        stats["teacher_correct"] = sum(bool(r["correct"]) for r in checked) / len(checked) if checked else None
        stats["decoding"] = ({"mode": "sample", "temperature": config.gen_temperature, "top_p": config.gen_top_p}
                             if config.gen_decoding == "sample" else {"mode": "greedy"})
        stats["truncated"] = sum(bool(r.get("truncated")) for r in rows)
        stats["truncated_policy"] = config.truncated
        keep = [not (config.filter_correct and r["correct"] is False) for r in rows]
        stats["dropped_incorrect"] = len(rows) - sum(keep)
        if config.truncated == "drop":
            keep = [k and not r.get("truncated") for k, r in zip(keep, rows)]
        stats["dropped_truncated"] = len(rows) - stats["dropped_incorrect"] - sum(keep)
        pairs = [(p, r["response"], not r.get("truncated")) for p, r, k in zip(prompts, rows, keep) if k]
        if not pairs:
            raise UsageError(f"no teacher response to --prompts {config.prompts} is left after filtering "
                             f"({stats['dropped_incorrect']} incorrect, {stats['dropped_truncated']} cut by "
                             f"--gen-max-new-tokens); pass --no-filter-correct, --truncated keep, a larger "
                             f"--gen-max-new-tokens or more --num-prompts")
    else:
        missing = [p for p in prompts if p.response is None]
        if missing:
            raise UsageError(f"--data dataset needs responses, but --prompts {config.prompts} item {missing[0].id} has "
                             f"none; add 'response' (or a final assistant message), or use --data self")
        pairs = [(p, p.response, True) for p in prompts]
    examples = [e for e in (tokenize_example(p, r, tokenizer, config.max_seq_len, end=end) for p, r, end in pairs)
                if e is not None]
    stats["dropped_too_long"] = len(pairs) - len(examples)
    stats["examples"] = len(examples)
    if not examples:
        raise UsageError(f"no training example has a response token within --max-seq-len {config.max_seq_len}; "
                         f"raise it")
    return examples, stats


def recover(model, tokenizer, *, teacher=None, teacher_tokenizer=None, config: RecoverConfig, out: str | Path,
            overwrite: bool = False, resume: bool = True, dtype: str | None = "auto") -> dict:
    """Train a pruned ``model`` to recover, writing into ``out``: ``adapter/`` (LoRA), ``merged/`` (a full
    checkpoint plain transformers loads), ``train_log.jsonl``, ``self_generated.jsonl`` (teacher responses,
    reused by later runs with the same teacher, prompts and decoding settings), ``checkpoint/`` (resume state)
    and ``recover.json`` (this summary).

    Acts in place: afterwards ``model`` holds the recovered weights (LoRA merged). ``teacher`` (the
    unpruned model) writes the responses for ``data="self"`` and the target distributions for
    ``loss="kd"``/``"mix"``; when None it is loaded from base_model in the pruned folder's prunescope.json.
    With ``resume`` a checkpoint in ``out`` made with the same settings is continued (a larger
    ``max_steps`` trains further); ``overwrite`` starts over (the teacher-response cache is kept).
    ``merged/`` is written in ``dtype`` (``auto``: the dtype the pruned model is stored in).
    Returns {steps, tokens_seen, response_tokens, wall_time, final_loss, tokens_per_second, data, paths}.
    """
    from accelerate import PartialState
    from accelerate.utils import set_seed

    config.validate()
    out = Path(out)
    state = PartialState()
    if state.is_main_process:
        _prepare_out(out, overwrite=overwrite, resume=resume)
    state.wait_for_everyone()
    if config.qlora and not getattr(model, "is_loaded_in_4bit", False):
        raise UsageError("--qlora needs the student loaded in 4-bit; load it with a bitsandbytes "
                         "BitsAndBytesConfig(load_in_4bit=True) or use the prunescope recover command")
    teacher_name, teacher, teacher_tokenizer = _resolve_teacher(model, teacher, teacher_tokenizer, tokenizer, config)
    if config.loss != "sft":
        if callable(teacher) and not hasattr(teacher, "generate"):
            teacher, teacher_tokenizer = teacher()
        check_same_tokenizer(tokenizer, teacher_tokenizer)

    kind = prompt_source_kind(config.prompts)
    data_stats = {"prompt_source": config.prompts, "prompt_kind": kind,
                  "label": "task-specific recovery" if kind == "task-specific" else "general recovery"}
    prompts = load_prompts(config.prompts, num=config.num_prompts, seed=config.seed, task_data=config.prompts_data,
                           disjoint_from=config.disjoint_from, stats=data_stats)
    if config.data == "self" and config.max_steps:
        # A short run trains on max_steps * (examples per step) examples: the teacher answers only those.
        need = config.max_steps * config.batch_size * config.grad_accum * state.num_processes
        if len(prompts) > need:
            data_stats["prompts_available"], prompts = len(prompts), prompts[:need]
    # Every process answers its own share of the prompts; they meet once, after all have finished.
    barrier = state.wait_for_everyone if state.num_processes > 1 else None
    examples, data_stats = build_training_examples(prompts, tokenizer, config, out=out, teacher_name=teacher_name,
                                                   teacher=teacher, teacher_tokenizer=teacher_tokenizer,
                                                   stats=data_stats, rank=state.process_index,
                                                   world=state.num_processes, barrier=barrier)
    log.info("recovery data: %s", describe_data(data_stats))
    offloaded = None
    if config.loss == "sft":
        # The teacher's work is done: a teacher this run loaded is freed, one the caller holds (a study's
        # base model) waits on the CPU while the student trains, and goes back afterwards.
        if config.offload_teacher and isinstance(teacher, torch.nn.Module) and \
                next(teacher.parameters()).device.type != "cpu":
            offloaded = (next(teacher.parameters()).device, teacher)
            teacher.to("cpu")
        teacher = None
        _release_memory()
    metadata, source = pruned_metadata(model), model_source(model)
    set_seed(config.seed)  # adapter initialisation
    model = prepare(model, config)
    try:
        summary = train(model, tokenizer, examples, config=config, out=out, teacher=teacher, resume=resume)
    finally:
        if offloaded is not None:
            offloaded[1].to(offloaded[0])
    restore_dtype(model)
    summary["data"] = data_stats
    summary["teacher"] = teacher_name
    paths = {"train_log": str(out / TRAIN_LOG), "checkpoint": str(out / CHECKPOINT), "merged": str(out / "merged")}
    if config.data == "self":
        paths["self_generated"] = str(out / CACHE_FILE)
    if config.method == "lora":
        paths["adapter"] = str(out / "adapter")
    summary["paths"] = paths
    if state.is_main_process:
        from prunescope.recovery.export import export
        export(model, tokenizer, out, config=config, summary=summary, metadata=metadata, source=source, dtype=dtype)
        write_json(out / SUMMARY, {**summary, "config": config.to_dict()})
    state.wait_for_everyone()
    return summary
