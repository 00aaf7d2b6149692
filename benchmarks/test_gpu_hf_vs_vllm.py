"""GPU benchmark: prunescope's HF engine vs the vLLM backend on the paper's probe tasks.

Runs only when asked for and a CUDA device and vLLM are present::

    PRUNESCOPE_GPU_MODEL=HuggingFaceTB/SmolLM2-135M-Instruct \\
        pytest -m gpu benchmarks/test_gpu_hf_vs_vllm.py -s [--gsm8k DIR via PRUNESCOPE_GSM8K]

For every task it evaluates the same items with both backends (the HF engine with shared-prefix KV
reuse and ``batch_size: auto``; vLLM with automatic prefix caching), prints items/s of each (median of
3) and their ratio, and asserts that they agree: multiple-choice accuracy within 0.02 (bf16 kernels
differ) and at least 90% identical greedy outputs. The speed numbers are printed, not asserted.
"""
from __future__ import annotations

import os
import statistics
import time

import pytest

TASKS = ["arith_mixed_first_digit", "arith_mixed_gen", "arith_add_2d_gen", "arith_add_2d_mc", "brackets4_gen",
         "brackets4_mc"]


@pytest.mark.gpu
@pytest.mark.parametrize("task_name", TASKS + (["gsm8k"] if os.environ.get("PRUNESCOPE_GSM8K") else []))
def test_hf_engine_vs_vllm(task_name):  # pragma: no cover - needs a GPU and vllm
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("vllm")
    from prunescope.eval.runner import HFBackend, _run_generate, _run_multiple_choice
    from prunescope.eval.vllm_backend import VllmBackend
    from prunescope.models import load_model
    from prunescope.tasks import get_task

    name = os.environ.get("PRUNESCOPE_GPU_MODEL", "HuggingFaceTB/SmolLM2-135M-Instruct")
    limit = int(os.environ.get("PRUNESCOPE_GPU_LIMIT", "500"))
    model, tok = load_model(name, dtype="bfloat16", device="cuda")
    backends = {"hf": HFBackend(model, tok), "vllm": _vllm(VllmBackend, name)}
    task = get_task(task_name, data=os.environ.get("PRUNESCOPE_GSM8K")) if task_name == "gsm8k" else get_task(task_name)
    if task.evaluate_fn is not None:
        pytest.skip(f"{task_name} runs through its own evaluator")
    items = task.items(limit, seed=0, split="eval")
    run = _run_multiple_choice if task.kind == "multiple_choice" else _run_generate
    times, results = {k: [] for k in backends}, {}
    for _ in range(3):
        for key, backend in backends.items():
            start = time.perf_counter()
            results[key] = run(task, items, backend, tok, batch_size="auto", chat=None, progress=False)
            times[key].append(time.perf_counter() - start)
    rate = {k: len(items) / statistics.median(v) for k, v in times.items()}
    acc = {k: sum(r[0]) / len(items) for k, r in results.items()}
    print(f"\n{task_name}: {len(items)} items; HF engine {rate['hf']:.1f} items/s, vLLM {rate['vllm']:.1f} items/s, "
          f"vLLM/HF {rate['vllm'] / rate['hf']:.2f}x; accuracy HF {acc['hf']:.3f}, vLLM {acc['vllm']:.3f}")
    if task.kind == "multiple_choice":
        assert abs(acc["hf"] - acc["vllm"]) <= 0.02
    else:
        outs = {k: [s["output"] for s in r[2]] for k, r in results.items()}
        same = sum(a == b for a, b in zip(outs["hf"], outs["vllm"])) / len(items)
        print(f"identical outputs: {same:.1%}")
        assert same >= 0.9


_engines: dict = {}


def _vllm(cls, name):
    """One vLLM engine per model for the whole session (starting one takes a while)."""
    if name not in _engines:
        _engines[name] = cls(name, dtype="bfloat16", gpu_memory_utilization=0.5)
    return _engines[name]
