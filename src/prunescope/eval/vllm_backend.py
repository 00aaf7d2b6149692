"""Optional vLLM backend for GPU users (``prunescope eval --backend vllm``; ``pip install prunescope[vllm]``).

vLLM loads its own copy of the model from a path or hub id, so it evaluates saved checkpoints (a pruned
folder written by ``prunescope prune``), not an in-memory model. It offers the same two calls as the
HF engine: greedy ``generate`` with stop strings, and ``score_choices`` (sum log-prob of each
continuation, read from vLLM's prompt log-probs of context + continuation). Automatic prefix caching is
on (``enable_prefix_caching``): the few-shot block every prompt of a task repeats is computed once
and its KV blocks are reused, as the HF engine does with ``prunescope.eval.prefix``. Tests for it
carry the ``gpu`` marker; it is not exercised on CPU-only machines, which never import vLLM.
"""
from __future__ import annotations

from prunescope.errors import UsageError
from prunescope.eval.engine import encode_pair, truncate_at_stop


class VllmBackend:
    """A vLLM engine behind prunescope's backend interface."""

    def __init__(self, model: str, *, dtype: str = "auto", gpu_memory_utilization: float = 0.85,
                 enable_prefix_caching: bool = True, **kwargs):
        try:
            from vllm import LLM
        except ImportError:
            raise UsageError("--backend vllm needs vLLM and a GPU: pip install 'prunescope[vllm]'; "
                             "or use --backend hf") from None
        self.llm = LLM(model=model, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                       enable_prefix_caching=enable_prefix_caching, **kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def generate(self, prompts: list[str], *, max_new_tokens: int, stop: list[str] | None = None, **_) -> list[str]:
        """Greedy continuations cut at the first stop string."""
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop=list(stop or []))
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        return [truncate_at_stop(o.outputs[0].text, stop or [])[0] for o in outs]

    def score_choices(self, items: list[tuple[str, list[str]]], **_) -> list[list[float]]:
        """Sum log-prob of every continuation given its context (vLLM prefix caching shares contexts)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        pairs = [encode_pair(self.tokenizer, ctx, c) for ctx, choices in items for c in choices]
        prompts = [TokensPrompt(prompt_token_ids=ctx + cont) for ctx, cont in pairs]
        outs = self.llm.generate(prompts, SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)
        flat = []
        for (ctx, cont), out in zip(pairs, outs):
            logprobs = out.prompt_logprobs
            flat.append(sum(logprobs[len(ctx) + j][tok].logprob for j, tok in enumerate(cont)))
        scores, k = [], 0
        for _, choices in items:
            scores.append(flat[k:k + len(choices)])
            k += len(choices)
        return scores
