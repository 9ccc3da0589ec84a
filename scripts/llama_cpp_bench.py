#!/usr/bin/env python3
"""Times llama.cpp (PyPI llama-cpp-python) on a prompt, for `zkinfer bench runtime`: prefill, then greedy
decoding one token at a time, the same loop as the runtime's bench. Prints one JSON object on stdout:

    {"measured": true, "llama_cpp_python": "0.3.36", "threads": 2, "prompt_tokens": 14, "prefill_s": ...,
     "token_s": [... one per generated token ...], "tokens": [...], "logprobs": [...]}

or, when llama_cpp cannot be imported, {"measured": false, "reason": "..."} (exit status 0), so the bench can
say how to install it instead of failing.

    python3 scripts/llama_cpp_bench.py MODEL.gguf --prompt "..." --tokens 64 --threads 2

Installing llama-cpp-python builds llama.cpp from source (cmake and a C compiler, ~15 minutes on 2 cores):
    bash scripts/llama_cpp.sh
"""
import argparse
import json
import math
import sys
import time

INSTALL = "bash scripts/llama_cpp.sh"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    try:
        import llama_cpp
        import numpy as np
    except ImportError as e:
        print(json.dumps({"measured": False, "reason": f"{e} (install: {INSTALL})"}))
        return 0

    llm = llama_cpp.Llama(
        model_path=args.model,
        n_ctx=max(512, args.tokens + 64),
        n_threads=args.threads,
        n_threads_batch=args.threads,
        logits_all=False,
        verbose=False,
    )
    n_vocab = llm.n_vocab()

    def last_logits():
        return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,)).astype(np.float64)

    ids = llm.tokenize(args.prompt.encode("utf-8"), add_bos=True, special=False)
    # One untimed warm-up run of the whole loop's shapes, so that first-use costs do not count.
    llm.reset()
    llm.eval(ids)
    llm.eval([int(np.argmax(last_logits()))])

    llm.reset()
    start = time.perf_counter()
    llm.eval(ids)
    row = last_logits()
    prefill = time.perf_counter() - start
    tokens, logprobs, token_s = [], [], []
    for _ in range(args.tokens):
        token = int(np.argmax(row))
        m = row.max()
        lse = m + math.log(np.exp(row - m).sum())
        tokens.append(token)
        logprobs.append(float(row[token] - lse))
        start = time.perf_counter()
        llm.eval([token])
        row = last_logits()
        token_s.append(time.perf_counter() - start)
    print(json.dumps({
        "measured": True,
        "llama_cpp_python": llama_cpp.__version__,
        "threads": args.threads,
        "prompt_tokens": len(ids),
        "prefill_s": prefill,
        "token_s": token_s,
        "tokens": tokens,
        "logprobs": logprobs,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
