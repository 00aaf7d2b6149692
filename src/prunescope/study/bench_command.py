"""``prunescope bench``: parameters, peak memory, prefill latency and decode tokens/s of one model."""
from __future__ import annotations

from dataclasses import dataclass

from prunescope.config import field, require

HELP = "Measure a model's parameters, peak memory, prefill latency and decode tokens/s (median of repeats)."


@dataclass
class Config:
    model: str = field("smollm2-135m", help="model to measure: hub id, folder, .gguf file or smollm2-135m")
    out: str | None = field(None, help="write the measurements to this JSON file (e.g. efficiency.json)")
    baseline: str | None = field(None, help="efficiency.json of the unpruned model, to report speedups against it "
                                           "(with --layers the unpruned model is timed alongside instead)")
    layers: list[int] | None = field(None, help="skip these 0-based layers virtually before measuring (e.g. 3,5,7)")
    prompt_tokens: int = field(128, help="prompt length for the prefill measurement")
    new_tokens: int = field(32, help="tokens decoded greedily from the KV cache per round")
    repeats: int = field(5, help="timed rounds (the median is reported)")
    warmup: int = field(1, help="untimed rounds before timing")
    batch_size: int = field(1, help="sequences per round")
    dtype: str = field("auto", help="auto, float32, bfloat16 or float16")
    device: str = field("auto", help="auto, cpu or cuda")

    def __post_init__(self) -> None:
        for name in ("prompt_tokens", "new_tokens", "repeats", "batch_size"):
            require(getattr(self, name) >= 1, f"--{name.replace('_', '-')} {getattr(self, name)} must be at least 1")
        require(self.warmup >= 0, f"--warmup {self.warmup} must be 0 or more")


def format_table(result: dict) -> str:
    """A human-readable summary of one measurement."""
    params = result["parameters"]
    rows = [
        ("layers", f"{result['num_layers']}"),
        ("parameters", f"{params['total'] / 1e6:.2f} M ({params['blocks'] / 1e6:.2f} M in blocks)"),
        ("peak memory", f"{result['memory']['peak_bytes'] / 2**20:.1f} MiB ({result['memory']['method']})"),
        ("prefill", f"{result['prefill_ms']:.1f} ms for {result['settings']['prompt_tokens']} tokens"),
        ("decode", f"{result['decode_tokens_per_s']:.1f} tokens/s"),
        ("device", f"{result['device']} {result['dtype']} ({result['threads']} threads)"),
    ]
    if "speedup" in result:
        s = result["speedup"]
        from prunescope.speed import fmt_speedup, speed_verdict
        iv = s.get("decode_interval")
        said = speed_verdict(iv) if iv and iv.get("paired") else "base timed apart: no claim"
        rows += [("decode speedup", f"{fmt_speedup(s['decode'], iv)} ({said}; ideal {s['ideal']:.2f}x, "
                                    f"layer ratio {s['layer_ratio']:.2f}x)"),
                 ("prefill speedup", f"{s['prefill']:.2f}x")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def run(config: Config) -> int:
    from prunescope.io import read_json, write_json
    from prunescope.models import load_model
    from prunescope.pruning import skip_layers
    from prunescope.study.efficiency import measure_efficiency

    baseline = read_json(config.baseline) if config.baseline else None
    model, tokenizer = load_model(config.model, dtype=config.dtype, device=config.device)
    settings = dict(prompt_tokens=config.prompt_tokens, new_tokens=config.new_tokens, repeats=config.repeats,
                    warmup=config.warmup, batch_size=config.batch_size)
    if config.layers:  # the unpruned model is at hand: time it alongside, rounds interleaved (prunescope.speed)
        result = measure_efficiency(lambda: skip_layers(model, layers=config.layers), tokenizer, base=model,
                                    **settings)
    else:
        result = measure_efficiency(model, tokenizer, baseline=baseline, **settings)
    result["model"] = config.model
    if config.layers:
        result["skipped_layers"] = sorted(config.layers)
    print(format_table(result))
    if config.out:
        write_json(config.out, result)
    return 0
