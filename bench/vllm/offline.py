"""vLLM offline inference of the small random-weights Llama (make_model.py):
the engine starts (a main process, EngineCore and a Worker, by spawn), loads
the weights, allocates the KV cache, generates a few completions and exits.

    VLLM_CPU_KVCACHE_SPACE=1 /opt/ramwatchd-vllm/bin/python bench/vllm/offline.py [MODEL_DIR]
"""
import sys

from vllm import LLM, SamplingParams


def main(model):
    llm = LLM(model=model, dtype="bfloat16", max_model_len=512, enforce_eager=True)
    outputs = llm.generate(["The weights load lazily", "Memory is"] * 2, SamplingParams(max_tokens=16))
    print(f"generated {sum(len(o.outputs[0].token_ids) for o in outputs)} tokens")


if __name__ == "__main__":     # spawned workers import this module again
    main(sys.argv[1] if len(sys.argv) > 1 else "/opt/ramwatchd-vllm/model")
