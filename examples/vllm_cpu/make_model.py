"""Save a randomly initialised Llama for vLLM's CPU backend (no hub download).

Usage: ``python make_model.py OUT_DIR [small|timing|large]``

* ``small`` (2.9M parameters, fp32): 4 layers, 2 KV heads of 64; ``initializer_range=0.3``
  so greedy decoding gives varied tokens (the default 0.02 repeats one token), which
  makes the reuse check sensitive.
* ``timing`` (32.0M parameters, bf16): 8 layers, hidden 512, for time-to-first-token
  figures on the shared 2-core machine: a 2048-token prefill takes about a second on one
  core, so prefill dominates the miss while a run stays short enough to finish under load.
* ``large`` (158.4M parameters, bf16): 12 layers, hidden 1024, the issue's "about 144M"
  timing model; its 2048-token prefill did not finish on the loaded machine.

vLLM reads it with ``skip_tokenizer_init=True`` and token-id prompts.
"""

from __future__ import annotations

import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    "small": {
        "vocab_size": 1024,
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "initializer_range": 0.3,
        "torch_dtype": "float32",
    },
    "timing": {
        "vocab_size": 8192,
        "hidden_size": 512,
        "intermediate_size": 1408,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 64,
        "initializer_range": 0.02,
        "torch_dtype": "bfloat16",
    },
    "large": {
        "vocab_size": 8192,
        "hidden_size": 1024,
        "intermediate_size": 2816,
        "num_hidden_layers": 12,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "initializer_range": 0.02,
        "torch_dtype": "bfloat16",
    },
}


def main() -> None:
    """Build and save the model."""
    out = sys.argv[1]
    shape = SHAPES[sys.argv[2] if len(sys.argv) > 2 else "small"]
    torch.manual_seed(0)
    config = LlamaConfig(
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        **shape,
    )
    model = LlamaForCausalLM(config)
    if shape["torch_dtype"] == "bfloat16":
        model = model.to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    print(f"{sum(p.numel() for p in model.parameters())} parameters saved to {out}")


if __name__ == "__main__":
    main()
