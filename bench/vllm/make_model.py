"""A small Llama with random weights, and a tokenizer trained offline: a model
vLLM loads like any other, made without a model hub.

    /opt/ramwatchd-vllm/bin/python bench/vllm/make_model.py DIR

About 300 MB of safetensors (bfloat16), the size the README's figures use.
"""
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CORPUS = ("The quick brown fox jumps over the lazy dog. Memory is allocated, mapped, touched and "
          "released; weights load lazily from safetensors; the KV cache is one large mapping. ") * 50


def tokenizer():
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def main(out):
    out = Path(out)
    config = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2048, num_hidden_layers=8,
                         num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=2048,
                         bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer().save_pretrained(out)
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(f"{out}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, "
          f"{size / 2**20:.0f} MiB of safetensors")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "/opt/ramwatchd-vllm/model"))
