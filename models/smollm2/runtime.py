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


class BpeTokenizer:
    """A plain-Python byte-level BPE over tokenizer.json's vocab and merges, written from the
    algorithm (GPT-2's) rather than from the tokenizers crate, to cross-check tokenizer.json.

    Pre-tokenization as llama.cpp's "smollm" pre-tokenizer: every digit a piece of its own, then
    GPT-2's split regex; special tokens (tokenizer.json's added_tokens) are matched first,
    anywhere in the text."""

    GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

    def __init__(self, path=HERE / "tokenizer.json"):
        import regex
        spec = json.loads(Path(path).read_text())
        self.vocab = spec["model"]["vocab"]
        self.ranks = {tuple(m): i for i, m in enumerate(spec["model"]["merges"])}
        self.specials = {t["content"]: t["id"] for t in spec["added_tokens"]}
        alts = sorted(self.specials, key=len, reverse=True)
        self.special_re = regex.compile("(" + "|".join(regex.escape(s) for s in alts) + ")")
        self.digit_re = regex.compile(r"(\p{N})")
        self.split_re = regex.compile(self.GPT2_SPLIT)
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
            list(range(ord("®"), ord("ÿ") + 1))
        cs, n = bs[:], 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        self.byte_char = {b: chr(c) for b, c in zip(bs, cs)}
        self.cache = {}

    def bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        parts = list(word)
        while len(parts) > 1:
            best, best_rank = None, None
            for i in range(len(parts) - 1):
                r = self.ranks.get((parts[i], parts[i + 1]))
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best is None:
                break
            a, b = parts[best], parts[best + 1]
            merged, i = [], 0
            while i < len(parts):  # merge every occurrence of the pair, left to right
                if i < len(parts) - 1 and parts[i] == a and parts[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = [self.vocab[p] for p in parts]
        self.cache[word] = ids
        return ids

    def encode(self, text):
        ids = []
        for chunk in self.special_re.split(text):
            if not chunk:
                continue
            if chunk in self.specials:
                ids.append(self.specials[chunk])
                continue
            for sub in self.digit_re.split(chunk):
                for piece in self.split_re.findall(sub):
                    ids.extend(self.bpe("".join(self.byte_char[b] for b in piece.encode("utf-8"))))
        return ids
