"""Recovery losses, summed over response tokens (the caller divides by the token count of the whole
optimizer step, so gradient accumulation equals one larger batch).

``sft``: cross-entropy of the response tokens. ``kd``: KL(teacher || student) of the next-token
distributions at the same positions, optionally over the teacher's top-k tokens only, times T^2.
``mix``: ``kd_weight * kd + (1 - kd_weight) * sft``. ``onpolicy``: the generalized Jensen-Shannon
divergence of GKD (Agarwal et al. 2024, Eq. 1) as TRL computes it (``trl/experimental/gkd/gkd_trainer.py``,
``GKDTrainer.generalized_jsd_loss``): beta 0 is KL(teacher || student), beta 1 is KL(student || teacher),
in between ``beta * KL(teacher || m) + (1 - beta) * KL(student || m)`` with m = beta*teacher + (1-beta)*student.
Which sequences it is computed on (the student's own samples) is the training loop's business (onpolicy.py).
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


def generalized_jsd_sum(logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, *,
                        beta: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    """Summed generalized JSD over response positions (see the module docstring); vocabularies are cut to
    the shorter one, as for ``kd``. TRL calls it at temperature 1 (its temperature is for sampling)."""
    logits, labels = _shift(logits, labels)
    teacher_logits = teacher_logits[:, :-1, :]
    vocab = min(logits.size(-1), teacher_logits.size(-1))
    mask = labels != -100
    student_logp = F.log_softmax(logits[mask][:, :vocab].float() / temperature, dim=-1)
    teacher_logp = F.log_softmax(teacher_logits[mask][:, :vocab].float() / temperature, dim=-1)
    if beta == 0:
        div = F.kl_div(student_logp, teacher_logp, reduction="none", log_target=True)
    elif beta == 1:
        div = F.kl_div(teacher_logp, student_logp, reduction="none", log_target=True)
    else:
        b = torch.tensor(beta, dtype=student_logp.dtype, device=student_logp.device)
        mixture = torch.logsumexp(torch.stack([student_logp + torch.log1p(-b), teacher_logp + torch.log(b)]), dim=0)
        div = b * F.kl_div(mixture, teacher_logp, reduction="none", log_target=True) + \
            (1 - b) * F.kl_div(mixture, student_logp, reduction="none", log_target=True)
    return div.sum()


def recovery_loss_sum(kind: str, logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None = None,
                      *, kd_weight: float = 0.5, temperature: float = 1.0, topk: int = 0,
                      beta: float = 0.5) -> torch.Tensor:
    """The summed loss of ``kind`` (sft | kd | mix | onpolicy) for one micro-batch."""
    if kind == "sft":
        return sft_loss_sum(logits, labels)
    if kind == "onpolicy":
        return generalized_jsd_sum(logits, teacher_logits, labels, beta=beta)
    kd = kd_loss_sum(logits, teacher_logits, labels, temperature=temperature, topk=topk)
    if kind == "kd":
        return kd
    return kd_weight * kd + (1.0 - kd_weight) * sft_loss_sum(logits, labels)
