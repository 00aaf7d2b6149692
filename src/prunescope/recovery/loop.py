"""The training loop: accelerate-driven, seeded, resumable with the same final weights.

Reproducibility does not depend on saved random-number state: the data order of epoch e is a
permutation seeded by ``seed + e``, and the dropout generator is reseeded at every step from
(seed, step, process index). A checkpoint therefore needs only the trainable tensors, the optimizer
and scheduler state, and the step; resuming replays exactly what an uninterrupted run does.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path

import torch

from prunescope.errors import UsageError
from prunescope.io import atomic_dir, read_json, write_json, write_jsonl
from prunescope.recovery.config import RESUME_FIELDS
from prunescope.recovery.losses import recovery_loss_sum
from prunescope.recovery.methods import autocast_dtype, trainable_state

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
TRAIN_LOG = "train_log.jsonl"


def example_order(num_examples: int, start: int, count: int, seed: int) -> list[int]:
    """Indices of examples at global positions ``start .. start+count`` of the endless, per-epoch
    reshuffled stream."""
    out: list[int] = []
    perms: dict[int, list[int]] = {}
    for pos in range(start, start + count):
        epoch = pos // num_examples
        if epoch not in perms:
            g = torch.Generator().manual_seed(seed + epoch)
            perms[epoch] = torch.randperm(num_examples, generator=g).tolist()
        out.append(perms[epoch][pos % num_examples])
    return out


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on context and padding)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, :n] = torch.tensor(e["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def steps_for_one_epoch(num_examples: int, config, num_processes: int = 1) -> int:
    return max(1, math.ceil(num_examples / (config.batch_size * config.grad_accum * num_processes)))


def _scheduler(optimizer, config, max_steps: int):
    from transformers import get_scheduler
    return get_scheduler(config.lr_scheduler if config.lr_scheduler != "constant" else "constant_with_warmup",
                         optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=max_steps)


def _accepts_logits_to_keep(model) -> bool:
    import inspect
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def response_window(labels: torch.Tensor) -> int:
    """How many trailing positions hold every response token and the position before it (right
    padding puts all of them at the end), so logits are computed there only: the vocabulary
    projection over the context is most of the work that would be thrown away."""
    has = (labels != -100).any(0).nonzero()
    first = int(has[0]) if len(has) else 1
    return labels.size(1) - max(first - 1, 0)


def _step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step * 65_537 + rank) % (2 ** 63)


def save_checkpoint(out: Path, model, optimizer, scheduler, state: dict, log_rows: list[dict]) -> None:
    """Write ``checkpoint/`` (trainable tensors, optimizer, scheduler, state) and the log up to it, atomically."""
    from safetensors.torch import save_file
    with atomic_dir(out / CHECKPOINT, overwrite=True) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in trainable_state(model).items()}, str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        write_json(tmp / "state.json", state)
    write_jsonl(out / TRAIN_LOG, log_rows)


def load_checkpoint(out: Path, model, optimizer, scheduler, config) -> tuple[dict, list[dict]] | None:
    """Restore a checkpoint in ``out`` into model/optimizer/scheduler; its state and log rows, or None."""
    folder = out / CHECKPOINT
    if not (folder / "state.json").is_file():
        return None
    state = read_json(folder / "state.json")
    saved = state.get("config", {})
    changed = [f for f in RESUME_FIELDS if f in saved and saved[f] != getattr(config, f)]
    if changed:
        diffs = ", ".join(f"--{f.replace('_', '-')} {saved[f]!r} -> {getattr(config, f)!r}" for f in changed)
        raise UsageError(f"the checkpoint in {out} was made with other settings ({diffs}); rerun with the same "
                         f"settings to resume, or pass --overwrite (or --no-resume) to start over")
    from safetensors.torch import load_file
    tensors = load_file(str(folder / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = set(tensors) ^ {n for n, p in params.items() if p.requires_grad}
    if missing:
        raise UsageError(f"the checkpoint in {out} does not match this model ({len(missing)} tensors differ, e.g. "
                         f"{sorted(missing)[0]}); pass --overwrite to start over")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
    rows = []
    if (out / TRAIN_LOG).is_file():
        rows = [json.loads(line) for line in (out / TRAIN_LOG).read_text().splitlines() if line.strip()]
        rows = [r for r in rows if r["step"] <= state["step"]]
    return state, rows


def train(model, tokenizer, examples: list[dict], *, config, out: Path, teacher=None, resume: bool = True) -> dict:
    """Train ``model`` (trainable parameters already chosen) on tokenized ``examples`` for
    ``config.max_steps`` optimizer steps (default one epoch). Checkpoints go to ``out/checkpoint`` every
    ``config.save_every`` steps and at the end; with ``resume`` an existing checkpoint is continued.
    Returns the summary: steps, tokens_seen, response_tokens, wall_time, final_loss, tokens_per_second."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from prunescope.progress import bars_on

    out = Path(out)
    accelerator = Accelerator()
    rank, world = accelerator.process_index, accelerator.num_processes
    max_steps = config.max_steps or steps_for_one_epoch(len(examples), config, world)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
                                  weight_decay=config.weight_decay)
    cast = autocast_dtype(model)
    scheduler = _scheduler(optimizer, config, max_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    if teacher is not None:
        teacher.to(accelerator.device).eval()
    unwrapped = accelerator.unwrap_model(model)
    base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
    windowed = _accepts_logits_to_keep(base) and (teacher is None or _accepts_logits_to_keep(teacher))

    step, tokens_seen, response_tokens, wall_before, rows = 0, 0, 0, 0.0, []
    if resume:
        restored = load_checkpoint(out, unwrapped, optimizer, scheduler, config)
        if restored is not None:
            state, rows = restored
            step, tokens_seen, response_tokens = state["step"], state["tokens_seen"], state["response_tokens"]
            wall_before = state["wall_time"]
            log.info("resuming from step %d of %d (%s)", step, max_steps, out / CHECKPOINT)

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    per_step = config.batch_size * config.grad_accum * world
    start = time.perf_counter()
    bar = tqdm(total=max_steps, initial=step, desc="recover", unit="step", dynamic_ncols=True,
               disable=not accelerator.is_main_process or not bars_on())
    model.train()
    last_loss = rows[-1]["loss"] if rows else float("nan")

    def state_now() -> dict:
        return {"step": step, "data_position": step * per_step, "tokens_seen": tokens_seen,
                "response_tokens": response_tokens, "wall_time": wall_before + time.perf_counter() - start,
                "max_steps": max_steps, "num_examples": len(examples), "num_processes": world,
                "rng": "reseeded every step from (seed, step, process index)", "config": config.to_dict()}

    while step < max_steps:
        torch.manual_seed(_step_seed(config.seed, step, rank))
        order = example_order(len(examples), step * per_step, per_step, config.seed)
        micro = []
        for a in range(config.grad_accum):
            first = (a * world + rank) * config.batch_size
            micro.append(collate([examples[i] for i in order[first:first + config.batch_size]], pad_id))
        # Normalise by the response tokens of the whole step, so accumulation equals one larger batch.
        n_resp = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
        step_loss = torch.zeros((), device=accelerator.device)
        for a, batch in enumerate(micro):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            sync = contextlib.nullcontext() if a == len(micro) - 1 else accelerator.no_sync(model)
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            labels = batch["labels"]
            if windowed:
                keep = response_window(labels)
                inputs["logits_to_keep"] = keep
                labels = labels[:, labels.size(1) - keep:]
            autocast = torch.autocast(accelerator.device.type, dtype=cast) if cast else contextlib.nullcontext()
            with sync:
                with autocast:
                    logits = model(**inputs).logits
                teacher_logits = None
                if config.loss != "sft":
                    with torch.no_grad():
                        teacher_logits = teacher(**inputs).logits
                loss = recovery_loss_sum(config.loss, logits, labels, teacher_logits,
                                         kd_weight=config.kd_weight, temperature=config.kd_temperature,
                                         topk=config.kd_topk) / max(n_resp, 1)
                accelerator.backward(loss)
            step_loss += loss.detach()
        if config.max_grad_norm:
            accelerator.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        counts = torch.tensor([sum(int(b["attention_mask"].sum()) for b in micro), n_resp], device=accelerator.device)
        counts = accelerator.reduce(counts, reduction="sum")
        tokens_seen += int(counts[0])
        response_tokens += int(counts[1])
        last_loss = float(accelerator.reduce(step_loss, reduction="mean"))
        wall = wall_before + time.perf_counter() - start
        rows.append({"step": step, "loss": last_loss, "tokens_seen": tokens_seen, "response_tokens": response_tokens,
                     "lr": lr, "wall_time": round(wall, 3)})
        bar.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{tokens_seen / max(wall, 1e-9):.0f}")
        bar.update(1)
        if accelerator.is_main_process and (step == max_steps or (config.save_every and step % config.save_every == 0)):
            save_checkpoint(out, unwrapped, optimizer, scheduler, state_now(), rows)
        accelerator.wait_for_everyone()
    bar.close()
    model.eval()
    state = state_now()
    return {"steps": step, "max_steps": max_steps, "tokens_seen": tokens_seen, "response_tokens": response_tokens,
            "wall_time": state["wall_time"], "final_loss": last_loss,
            "tokens_per_second": tokens_seen / max(state["wall_time"], 1e-9)}
