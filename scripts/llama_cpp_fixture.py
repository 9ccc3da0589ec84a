#!/usr/bin/env python3
"""Writes fixtures/llama_cpp.json: llama.cpp's view of the packaged model, the outside oracle for the
runtime's tests (tokenizer ids for varied strings; prompt ids, last-position top logits and log-sum-exp, and a
32-token greedy continuation with per-token log-probabilities and top-1/top-2 margins).

Needs llama-cpp-python (builds llama.cpp from source: cmake and a C compiler, ~15 minutes on 2 cores):
    bash scripts/llama_cpp.sh
    ~/.cache/zkinfer-llama-venv/bin/python scripts/llama_cpp_fixture.py "$(zkinfer model path)" fixtures/llama_cpp.json
Not part of the test run: the fixture it writes is committed.
"""
import hashlib
import json
import math
import sys

import llama_cpp
import numpy as np

PROMPTS = [
    "The quick brown fox jumps over the lazy dog. In the beginning",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n    ",
    "The capital of France is",
]

BASE_STRINGS = [
    "", " ", "  ", "\t", "\n", "\n\n", "\r\n", "a", "A", "hello", "Hello world", " leading space",
    "trailing space ", "double  space", "tabs\tand\ttabs", "multiple\n\nnewlines\n\n\n", "12345", "3.14159",
    "1,000,000", "2026-11-25", "0xDEADBEEF", "-42", "1e-9", "café", "naïve résumé", "Straße", "Ærøskøbing",
    "こんにちは世界", "你好，世界", "안녕하세요", "Привет, мир", "Γειά σου Κόσμε", "مرحبا بالعالم", "שלום עולם",
    "नमस्ते दुनिया", "สวัสดีชาวโลก", "😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷🇯🇵", "🦀 Rust", "∑ x² ≤ ∞", "½ ¼ ¾",
    "fn main() { println!(\"hi\"); }", "for (int i = 0; i < n; i++) {", "if x == None:\n    return",
    "SELECT * FROM users WHERE id = 1;", "<html><body><p>Hi</p></body></html>", "<div class=\"x\">", "<br/>",
    "https://example.com/a?b=c&d=e", "user@example.com", "C:\\Windows\\System32", "~/.cache/zkinfer",
    "    indented four", "        indented eight", "\t\tindented tabs", "a\u00a0b", "zero\u200bwidth",
    "e\u0301", "ﬁ ligature", "ＡＢＣ full width", "<start_of_turn>user", "<bos>", "<unk>", "[INST]", "###",
    "...", "?!?!", "—–-", "«quotes»", "\"quoted\"", "'single'", "`backticks`", "$100.00", "€5", "¥1000",
]


def varied_strings():
    out = list(BASE_STRINGS)
    words = ["the", "proof", "token", "logit", "Zürich", "数据", "🚀", "x_1", "NaN", "über", "λ", "GPU"]
    for i in range(160):
        w = [words[(i * 7 + k * 3) % len(words)] for k in range(1 + i % 5)]
        sep = [" ", "  ", "\n", "\t", ", ", "", " \n "][i % 7]
        s = sep.join(w)
        if i % 3 == 0:
            s = s + str(i * 37)
        if i % 4 == 1:
            s = " " + s
        out.append(s)
    return out


def log_softmax(row):
    row = np.asarray(row, dtype=np.float64)
    m = row.max()
    lse = m + math.log(np.exp(row - m).sum())
    return row - lse, lse


def main():
    model_path, out_path = sys.argv[1], sys.argv[2]
    sha = hashlib.sha256(open(model_path, "rb").read()).hexdigest()
    llm = llama_cpp.Llama(model_path=model_path, n_ctx=512, logits_all=True, n_threads=2, verbose=False)
    fixture = {"model_sha256": sha, "llama_cpp_python": llama_cpp.__version__, "prompts": [], "tokenizer": []}
    for text in varied_strings():
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        fixture["tokenizer"].append({"text": text, "ids": list(map(int, ids))})
    for prompt in PROMPTS:
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
        llm.reset()
        llm.eval(ids)
        last = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        lp, lse = log_softmax(last)
        top = np.argsort(-last)[:20]
        entry = {
            "text": prompt,
            "ids": list(map(int, ids)),
            "last_top": [[int(i), float(last[i])] for i in top],
            "last_lse": lse,
            "greedy": [],
        }
        row = last
        for _ in range(32):
            lp, lse = log_softmax(row)
            order = np.argsort(-row)[:2]
            token = int(order[0])
            entry["greedy"].append({
                "id": token,
                "logprob": float(lp[token]),
                "lse": lse,
                "margin": float(row[order[0]] - row[order[1]]),
            })
            llm.eval([token])
            row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        fixture["prompts"].append(entry)
    with open(out_path, "w") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=1)
    print(f"wrote {out_path}: {len(fixture['tokenizer'])} strings, {len(PROMPTS)} prompts")


if __name__ == "__main__":
    main()
