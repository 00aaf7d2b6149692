"""Recovery losses, summed over response tokens (the caller divides by the token count of the whole
optimizer step, so gradient accumulation equals one larger batch).

``sft``: cross-entropy of the response tokens. ``kd``: KL(teacher || student) of the next-token
distributions at the same positions, optionally over the teacher's top-k tokens only, times T^2.
``mix``: ``kd_weight * kd + (1 - kd_weight) * sft``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _shift(logits: torch.Tensor, labels: torch.Tensor):
    """Position t predicts token t+1."""
    return logits[:, :-1, :], labels[:, 1:]


def sft_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy over positions whose label is not -100."""
    logits, labels = _shift(logits, labels)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), ignore_index=-100,
                           reduction="sum")


def kd_loss_sum(logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *, temperature: float = 1.0,
                topk: int = 0) -> torch.Tensor:
    """Summed token-level KL(teacher || student) over response positions. Both vocabularies are cut to
    the shorter one (embedding matrices are often padded past the tokenizer). With ``topk`` > 0 the
    teacher distribution is renormalised over its k most likely tokens."""
    logits, labels = _shift(logits, labels)
    teacher_logits = teacher_logits[:, :-1, :]
    vocab = min(logits.size(-1), teacher_logits.size(-1))
    mask = labels != -100
    student = logits[mask][:, :vocab].float() / temperature
    teacher = teacher_logits[mask][:, :vocab].float() / temperature
    student_logp = F.log_softmax(student, dim=-1)
    if topk and topk < vocab:
        top_values, top_index = teacher.topk(topk, dim=-1)
        teacher_logp = F.log_softmax(top_values, dim=-1)
        student_logp = student_logp.gather(-1, top_index)
    else:
        teacher_logp = F.log_softmax(teacher, dim=-1)
    kl = (teacher_logp.exp() * (teacher_logp - student_logp)).sum()
    return kl * temperature ** 2


def recovery_loss_sum(kind: str, logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None = None,
                      *, kd_weight: float = 0.5, temperature: float = 1.0, topk: int = 0) -> torch.Tensor:
    """The summed loss of ``kind`` (sft | kd | mix) for one micro-batch."""
    if kind == "sft":
        return sft_loss_sum(logits, labels)
    kd = kd_loss_sum(logits, teacher_logits, labels, temperature=temperature, topk=topk)
    if kind == "kd":
        return kd
    return kd_weight * kd + (1.0 - kd_weight) * sft_loss_sum(logits, labels)
