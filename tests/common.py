"""Tiny random models and a byte-level tokenizer built in-test (nothing is downloaded)."""
from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 256 + 3  # every byte, plus <pad>, <s>, </s>

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

ARCH_CONFIGS = {
    "llama": ("LlamaConfig", dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)),
    "mistral": ("MistralConfig", dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                      sliding_window=None)),
    "qwen2": ("Qwen2Config", dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)),
    "qwen3": ("Qwen3Config", dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, head_dim=8)),
    "gemma2": ("Gemma2Config", dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, head_dim=8,
                                    sliding_window=4, layer_types=None)),
    "gemma3_text": ("Gemma3TextConfig", dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                             head_dim=8, sliding_window=4, sliding_window_pattern=2)),
    "phi3": ("Phi3Config", dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                pad_token_id=0)),
    "gpt2": ("GPT2Config", dict(n_head=4, n_positions=128)),
    "gpt_neox": ("GPTNeoXConfig", dict(num_attention_heads=4, intermediate_size=64)),
    "opt": ("OPTConfig", dict(num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=32)),
}
ARCHS = list(ARCH_CONFIGS)


def make_tiny_model(model_type: str = "llama", *, layers: int = 6, hidden: int = 32, seed: int = 0):
    """A random CausalLM of ``model_type`` with ``layers`` blocks, fp32, eval mode."""
    import transformers

    cls_name, extra = ARCH_CONFIGS[model_type]
    cfg_cls = getattr(transformers, cls_name)
    if model_type == "gpt2":
        config = cfg_cls(vocab_size=VOCAB, n_embd=hidden, n_layer=layers, bos_token_id=1, eos_token_id=2, **extra)
    else:
        config = cfg_cls(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, max_position_embeddings=128,
                         bos_token_id=1, eos_token_id=2, **{"pad_token_id": 0, **extra})
    return model_from_config(config, seed=seed)


def model_from_config(config, *, seed: int = 0):
    """A random fp32 CausalLM for ``config`` in eval mode, with the weights the tiny models use."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Larger random weights make blocks matter, so that criteria and cuts are distinguishable.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    return model.eval()


def make_tokenizer():
    """A byte-level tokenizer: one token per byte, ids 3..258; ``<pad>``=0, ``<s>``=1, ``</s>``=2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(byte_chars):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny(path: Path, model_type: str = "llama", **kw) -> Path:
    """Save a tiny model and the byte tokenizer to ``path`` (a folder loadable by transformers)."""
    model = make_tiny_model(model_type, **kw)
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def write_tiny_gguf(path: Path, *, layers: int = 3) -> Path:
    """Write a tiny llama with the byte tokenizer as an f32 GGUF file (llama.cpp tensor names)."""
    import gguf
    import numpy as np

    model, tok = make_tiny_model("llama", layers=layers), make_tokenizer()
    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_context_length(c.max_position_embeddings)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_embedding_length(c.hidden_size)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    tokens = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda x: x[1])]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges([])
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    top = {"model.embed_tokens.weight": "token_embd", "model.norm.weight": "output_norm", "lm_head.weight": "output"}
    per_block = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for key, value in model.state_dict().items():
        if key in top:
            name = top[key]
        else:
            parts = key.split(".")
            name = f"blk.{parts[2]}.{per_block['.'.join(parts[3:-1])]}"
        w.add_tensor(name + ".weight", value.numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def span_io(model, tok, a: int, b: int, texts):
    """Input of block ``a`` and output of block ``b`` on ``texts``, one sequence at a time (no padding), read by
    hooks (the last entry of ``hidden_states`` is after the final norm, so it is not a block's output)."""
    from prunescope.models import get_layers
    ins, outs = [], []
    blocks = get_layers(model)
    h1 = blocks[a].register_forward_pre_hook(
        lambda m, args, kw: ins.append((args[0] if args else kw["hidden_states"]).detach()), with_kwargs=True)
    h2 = blocks[b].register_forward_hook(lambda m, args, o: outs.append((o[0] if isinstance(o, tuple) else o).detach()))
    with torch.no_grad():
        for t in texts:
            model(**tok(t, return_tensors="pt"), use_cache=False)
    h1.remove(), h2.remove()
    return torch.cat(ins, 1), torch.cat(outs, 1)
