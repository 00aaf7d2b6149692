"""Post-pruning recovery: LoRA, partial-layer or full finetuning of a pruned model, on the unpruned
teacher's own responses (``data="self"``) or a dataset's, with completion-only SFT, token-level
distillation on those sequences (``loss="kd"``), a mix, or on-policy distillation on the student's own
samples (``loss="onpolicy"``, GKD); ``token_budget`` makes runs compare at an equal number of trained tokens.

    from prunescope.recovery import RecoverConfig, recover
    summary = recover(pruned, tok, teacher=base, config=RecoverConfig(prompts="gsm8k", max_steps=200),
                      out="runs/recovered")

Command line (one process, CPU or one GPU)::

    prunescope recover --model PRUNED_DIR --teacher BASE --method lora --data self --loss sft \
        --prompts gsm8k --max-steps 200 --out runs/recovered

Several GPUs (data parallel; each process takes its own slice of every batch, so the effective batch
is ``--batch-size * --grad-accum * number of GPUs``; the teacher's responses are generated once, by
the first process, and shared through the cache)::

    accelerate launch --num_processes 4 --mixed_precision bf16 -m prunescope recover \
        --model PRUNED_DIR --teacher BASE --method lora --prompts gsm8k --max-steps 1000 --out runs/recovered

An interrupted run continues from ``OUT/checkpoint`` when rerun with the same flags, and ends with
the same weights as an uninterrupted run (same number of processes).
"""
from prunescope.recovery.api import recover
from prunescope.recovery.config import RecoverConfig

__all__ = ["RecoverConfig", "recover"]
