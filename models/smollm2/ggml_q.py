"""GGUF block formats used by models/smollm2/build.py, in numpy (no ggml needed).

Written from ggml's reference C code (ggml/src/ggml-quants.c: dequantize_row_q4_1,
dequantize_row_q8_0, quantize_row_q4_0_ref), keeping its float32 arithmetic step by step
so that the numpy requantization gives the same bytes as llama.cpp's quantizer
(build.py --check-llamacpp compares them when llama-cpp-python is installed).

Block layouts (32 weights per block, little-endian):
  Q4_0: f16 d, 16 bytes qs; weight j (j < 16) = (qs[j] & 15) - 8, weight j + 16 = (qs[j] >> 4) - 8,
        times d.
  Q4_1: f16 d, f16 m, 16 bytes qs; weight = q * d + m, nibbles as in Q4_0.
  Q8_0: f16 d, 32 int8 qs; weight = q * d.
"""

import numpy as np

QK = 32
Q4_0_BYTES = 18
Q4_1_BYTES = 20
Q8_0_BYTES = 34


def _blocks(raw, block_bytes):
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    rows = raw.shape[0]
    assert raw.shape[1] % block_bytes == 0, (raw.shape, block_bytes)
    return raw.reshape(rows, raw.shape[1] // block_bytes, block_bytes)


def _nibbles(qs):
    """[.., 16] uint8 -> [.., 32] codes in ggml order (low nibbles first, then high)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def dequantize_q4_1(raw):
    """[rows, nb*20] uint8 -> [rows, nb*32] float32, as dequantize_row_q4_1."""
    b = _blocks(raw, Q4_1_BYTES)
    d = b[..., 0:2].copy().view(np.float16).astype(np.float32)  # [rows, nb, 1]
    m = b[..., 2:4].copy().view(np.float16).astype(np.float32)
    q = _nibbles(b[..., 4:]).astype(np.float32)
    # C: x0*d + m in float (int x0 converted to float); no fused multiply-add in the reference
    # build of ggml-quants.c for the baseline x86-64 target.
    y = (q * d).astype(np.float32) + m
    return y.reshape(b.shape[0], -1).astype(np.float32)


def dequantize_q8_0(raw):
    """[rows, nb*34] uint8 -> [rows, nb*32] float32, as dequantize_row_q8_0."""
    b = _blocks(raw, Q8_0_BYTES)
    d = b[..., 0:2].copy().view(np.float16).astype(np.float32)
    q = b[..., 2:].copy().view(np.int8).astype(np.float32)
    return (q * d).reshape(b.shape[0], -1).astype(np.float32)


def dequantize_q4_0(raw):
    """[rows, nb*18] uint8 -> [rows, nb*32] float32."""
    codes, d = q4_0_codes(raw)
    return ((codes.astype(np.float32) - 8.0) * d[..., None]).reshape(codes.shape[0], -1)


def quantize_q4_0(x):
    """[rows, k] float32 -> [rows, k/32*18] uint8, as quantize_row_q4_0_ref.

    Per block: max = the value of largest magnitude (the first one on ties), d = max / -8,
    id = 1/d (0 when d = 0), code = min(15, trunc(x*id + 8.5)); d is stored as f16
    (round to nearest even) but id comes from the f32 d.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, k = x.shape
    assert k % QK == 0
    xb = x.reshape(rows, k // QK, QK)
    idx = np.argmax(np.abs(xb), axis=-1)  # first index of the largest |v|
    mx = np.take_along_axis(xb, idx[..., None], axis=-1)[..., 0]
    d = (mx / np.float32(-8.0)).astype(np.float32)
    with np.errstate(divide="ignore"):
        idv = np.where(d != 0, np.float32(1.0) / d, np.float32(0.0)).astype(np.float32)
    xs = (xb * idv[..., None]).astype(np.float32)
    t = (xs + np.float32(8.5)).astype(np.float32)
    # (int8_t) truncates toward zero; t >= 0.5 here so it is floor.
    codes = np.minimum(15, np.trunc(t).astype(np.int32)).astype(np.uint8)
    qs = codes[..., :16] | (codes[..., 16:] << 4)
    out = np.empty((rows, k // QK, Q4_0_BYTES), dtype=np.uint8)
    out[..., 0:2] = d.astype(np.float16)[..., None].view(np.uint8)
    out[..., 2:] = qs
    return out.reshape(rows, -1)


def q4_0_codes(raw):
    """[rows, nb*18] uint8 -> (codes [rows, nb, 32] uint8 in 0..15, d [rows, nb] float32)."""
    b = _blocks(raw, Q4_0_BYTES)
    d = b[..., 0:2].copy().view(np.float16).astype(np.float32)[..., 0]
    return _nibbles(b[..., 2:]), d


def q4_0_to_matmul_nbits(raw):
    """Q4_0 rows -> com.microsoft MatMulNBits (bits=4, block_size=32, no zero_points) B and scales.

    MatMulNBits packs weight 2i in the low nibble and 2i+1 in the high nibble of byte i of a
    block; its default zero point 8 is Q4_0's offset, so value = (code - 8) * scale as in Q4_0.
    Returns B uint8 [N, nb, 16] and scales float32 [N * nb].
    """
    codes, d = q4_0_codes(raw)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return np.ascontiguousarray(packed), np.ascontiguousarray(d.reshape(-1))
