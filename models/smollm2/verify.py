#!/usr/bin/env python3
"""Check what build.py made: the tokenizer and model.onnx, against each other and llama.cpp.

    python3 models/smollm2/verify.py [--n 32] [--threads 2] [--json OUT]

1. tokenizer.json through the `tokenizers` package == runtime.BpeTokenizer (plain Python BPE over
   the same vocab/merges) == llama.cpp's tokenizer on the GGUF (when llama_cpp imports), on the
   test prompts with and without the chat template and on some harder strings;
2. onnxruntime, model.onnx: one run over a whole sequence == prefill + one-token KV-cache steps;
3. greedy decoding of --n tokens (eos not stopping it) for each test prompt in the chat template,
   with onnxruntime, and with llama.cpp on the same Q4_0 GGUF when llama_cpp imports; prints how
   many leading tokens agree and the decoded texts.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from runtime import HERE, PROMPTS, BpeTokenizer, OnnxLM, apply_chat_template, load_tokenizer

Q4_0 = HERE / "SmolLM2-135M-Instruct.Q4_0.gguf"

HARD = [
    "",
    " ",
    "Hello world",
    "  leading spaces and trailing   ",
    "line one\nline two\n\n\tindented\r\n",
    "Numbers: 3.14159, 2026-12-01, 1,000,000 and 007.",
    "don't you'll we've I'M THEY'RE",
    "naïve café, straße, Ελληνικά, русский, 日本語, 한국어, العربية",
    "emoji 🙂👍🏽 and symbols ∑∫√ ©®™ — “quotes”",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "code: def f(x):\n    return x**2  # square\n",
    "https://example.com/path?q=1&r=two#frag",
]


def llama_model(vocab_only=False, threads=2, path=None, f32_kv=False):
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    kv = {"type_k": 0, "type_v": 0} if f32_kv else {}  # GGML_TYPE_F32 (default: F16)
    return Llama(model_path=str(path or Q4_0), n_threads=threads, n_threads_batch=threads, n_ctx=512,
                 logits_all=False, vocab_only=vocab_only, verbose=False, **kv)


def write_f32_gguf(src, dst):
    """src with every Q4_0 / Q8_0 tensor dequantized to F32: the same weights, which llama.cpp
    then multiplies in f32 instead of quantizing the activations to Q8_0 for its dot products."""
    import gguf
    import ggml_q
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), r.fields["general.architecture"].contents())
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vt = field.types[0]
        sub = field.types[1] if vt == gguf.GGUFValueType.ARRAY else None
        val = int(gguf.LlamaFileType.ALL_F32) if key == "general.file_type" else field.contents()
        w.add_key_value(key, val, vt, sub_type=sub)
    Q = gguf.GGMLQuantizationType
    for t in r.tensors:
        d = np.asarray(t.data)
        if t.tensor_type == Q.Q4_0:
            d = ggml_q.dequantize_q4_0(d)
        elif t.tensor_type == Q.Q8_0:
            d = ggml_q.dequantize_q8_0(d)
        else:
            assert t.tensor_type == Q.F32, t.tensor_type
        w.add_tensor(t.name, np.ascontiguousarray(d, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama_tokenize(llm, text):
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def last_logits(llm):
    """The logits llama.cpp computed for the last token of the last eval (with logits_all=False,
    llama-cpp-python 0.3.x no longer copies them into Llama.scores)."""
    import llama_cpp
    ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float32)


def llama_greedy(llm, prompt_ids, n):
    """Greedy (argmax) continuation with llama.cpp, eos not stopping it; also the logits of the
    first generated position."""
    llm.reset()
    llm.eval(prompt_ids)
    out, first_logits = [], None
    for _ in range(n):
        logits = last_logits(llm)
        if first_logits is None:
            first_logits = logits
        tok = int(np.argmax(logits))
        out.append(tok)
        if len(out) < n:
            llm.eval([tok])
    return out, first_logits


def leading_agreement(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the measurements here")
    ap.add_argument("--f32-reference", action="store_true",
                    help="let llama.cpp decode an F32 dequantized copy of the Q4_0 GGUF (written to a "
                    "temporary directory, 540 MB) with an F32 KV cache: the same weights and f32 math "
                    "on both sides, which checks the graph itself (by default llama.cpp runs the Q4_0 "
                    "file, quantizing activations to Q8_0 in its dot products, with an F16 KV cache)")
    args = ap.parse_args()
    report = {"llamacpp_weights": "F32 copy, F32 KV cache" if args.f32_reference else "Q4_0, F16 KV cache"}

    # 1. tokenizer
    hf, bpe = load_tokenizer(), BpeTokenizer()
    texts = HARD + PROMPTS + [apply_chat_template([{"role": "user", "content": p}]) for p in PROMPTS]
    try:
        readme = (HERE.parent.parent / "README.md").read_text()
        texts += [readme[i:i + 2000] for i in range(0, min(len(readme), 40000), 2000)]
    except OSError:
        pass
    llm_vocab = llama_model(vocab_only=True)
    same_bpe = same_llama = 0
    for t in texts:
        a = hf.encode(t, add_special_tokens=False).ids
        if bpe.encode(t) == a:
            same_bpe += 1
        else:
            print(f"tokenizer: tokenizers vs BpeTokenizer differ on {t[:60]!r}")
        if llm_vocab is not None:
            c = llama_tokenize(llm_vocab, t)
            if c == a:
                same_llama += 1
            else:
                print(f"tokenizer: tokenizers vs llama.cpp differ on {t[:60]!r}:\n  {a[:40]}\n  {c[:40]}")
        if hf.decode(a, skip_special_tokens=False) != t:
            print(f"tokenizer: decode(encode(t)) != t for {t[:60]!r}")
    print(f"tokenizer: {same_bpe}/{len(texts)} texts tokenizers == BpeTokenizer"
          + (f", {same_llama}/{len(texts)} tokenizers == llama.cpp" if llm_vocab is not None
             else ", llama.cpp not installed"))
    report["tokenizer"] = {"texts": len(texts), "tokenizers_eq_bpe": same_bpe,
                           "tokenizers_eq_llamacpp": same_llama if llm_vocab is not None else None}
    del llm_vocab

    # 2. KV cache consistency
    t0 = time.time()
    lm = OnnxLM(threads=args.threads)
    print(f"onnxruntime: session in {time.time() - t0:.2f} s")
    ids = hf.encode(apply_chat_template([{"role": "user", "content": PROMPTS[0]}]),
                    add_special_tokens=False).ids
    full, _ = lm.step(ids, lm.empty_cache(), 0)
    k = len(ids) - 6
    part, cache = lm.step(ids[:k], lm.empty_cache(), 0)
    steps = [part[0, -1]]
    for j in range(k, len(ids)):
        lg, cache = lm.step([ids[j]], cache, j)
        steps.append(lg[0, -1])
    inc = np.stack(steps[:-1])
    ref = full[0, k - 1:len(ids) - 1]
    diff = float(np.abs(inc - ref).max())
    print(f"onnxruntime: whole-sequence vs KV-cache step logits: max |diff| {diff:.2e} "
          f"(logit range {float(ref.min()):.1f}..{float(ref.max()):.1f})")
    report["kv_cache_max_abs_diff"] = diff

    # 3. greedy decoding
    tmp = None
    if args.f32_reference:
        tmp = tempfile.TemporaryDirectory()
        f32 = Path(tmp.name) / "SmolLM2-135M-Instruct.F32.gguf"
        write_f32_gguf(Q4_0, f32)
        llm = llama_model(threads=args.threads, path=f32, f32_kv=True)
        print(f"llama.cpp: on {f32.name} with an F32 KV cache")
    else:
        llm = llama_model(threads=args.threads)
    rows = []
    for p in PROMPTS:
        ids = hf.encode(apply_chat_template([{"role": "user", "content": p}]), add_special_tokens=False).ids
        t0 = time.time()
        ours, our_logits = lm.greedy(ids, args.n)
        dt = time.time() - t0
        row = {"prompt": p, "prompt_tokens": len(ids), "onnx": ours, "onnx_seconds": round(dt, 3),
               "onnx_text": hf.decode(ours, skip_special_tokens=False)}
        line = f"[{len(ids)} + {args.n} tokens, onnxruntime {dt:.2f} s]"
        if llm is not None:
            t0 = time.time()
            theirs, their_logits = llama_greedy(llm, ids, args.n)
            row["llamacpp_seconds"] = round(time.time() - t0, 3)
            row["llamacpp"] = theirs
            row["llamacpp_text"] = hf.decode(theirs, skip_special_tokens=False)
            row["agree_leading"] = leading_agreement(ours, theirs)
            row["agree_positions"] = int(sum(a == b for a, b in zip(ours, theirs)))
            d = np.abs(our_logits[0] - their_logits)
            row["first_logits_max_abs_diff"] = float(d.max())
            line += (f" agree: first {row['agree_leading']}/{args.n} "
                     f"(first-step logits max |diff| {d.max():.2e})")
        print(f"{p!r} {line}\n  onnx:  {row['onnx_text']!r}")
        if llm is not None and row["agree_leading"] < args.n:
            print(f"  llama: {row['llamacpp_text']!r}")
        rows.append(row)
    report["greedy"] = rows
    if llm is not None:
        agree = [r["agree_leading"] for r in rows]
        print(f"greedy: leading agreement per prompt {agree}; {sum(a == args.n for a in agree)}/"
              f"{len(rows)} prompts agree on all {args.n} tokens")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    sys.exit(main())
