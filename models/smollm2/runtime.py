"""Shared helpers for verify.py and make_fixtures.py: the chat template, the tokenizer.json, and
greedy decoding of model.onnx with onnxruntime and an explicit KV cache."""

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

# Short chat questions: the test prompts of verify.py and tests/fixtures/smollm2/.
PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "How many legs does a spider have?",
    "Write a haiku about the sea.",
    "What is 12 plus 7?",
    "Explain what a CPU does in one sentence.",
    "Give me a synonym for happy.",
    "Why is the sky blue?",
    "Translate 'good morning' into Spanish.",
    "What do bees make?",
]


def tokenizer_config():
    return json.loads((HERE / "tokenizer_config.json").read_text())


def apply_chat_template(messages, add_generation_prompt=True):
    """Render the GGUF's chat template (Jinja2, as transformers and llama.cpp's jinja mode do)."""
    import jinja2
    cfg = tokenizer_config()
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(cfg["chat_template"]).render(
        messages=messages, add_generation_prompt=add_generation_prompt,
        bos_token=cfg["bos_token"], eos_token=cfg["eos_token"])


def load_tokenizer():
    from tokenizers import Tokenizer
    return Tokenizer.from_file(str(HERE / "tokenizer.json"))


class OnnxLM:
    def __init__(self, path=HERE / "model.onnx", threads=2):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.past_names = [i.name for i in self.sess.get_inputs() if i.name.startswith("past_")]
        self.present_names = [o.name for o in self.sess.get_outputs() if o.name.startswith("present.")]
        shape = self.sess.get_inputs()[2].shape
        self.kv_heads, self.head_dim = shape[1], shape[3]

    def empty_cache(self, batch=1):
        z = np.zeros((batch, self.kv_heads, 0, self.head_dim), np.float32)
        return {n: z for n in self.past_names}

    def step(self, ids, cache, past_len):
        ids = np.asarray(ids, np.int64).reshape(1, -1)
        pos = np.arange(past_len, past_len + ids.shape[1], dtype=np.int64).reshape(1, -1)
        outs = self.sess.run(["logits"] + self.present_names,
                             {"input_ids": ids, "position_ids": pos, **cache})
        new_cache = {p.replace("present.", "past_key_values."): v
                     for p, v in zip(self.present_names, outs[1:])}
        return outs[0], new_cache

    def greedy(self, prompt_ids, n_new, eos=None):
        """Prefill prompt_ids in one run, then n_new - 1 one-token steps. Returns the new ids
        (stops early after eos when eos is given) and the per-step logits."""
        logits, cache = self.step(prompt_ids, self.empty_cache(), 0)
        past = len(prompt_ids)
        out, all_logits = [], []
        while True:
            last = logits[0, -1]
            all_logits.append(last)
            tok = int(np.argmax(last))
            out.append(tok)
            if len(out) == n_new or (eos is not None and tok == eos):
                return out, all_logits
            logits, cache = self.step([tok], cache, past)
            past += 1
