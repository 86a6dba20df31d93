#!/usr/bin/env python3
"""A copy of an ONNX model with random weights, for numerical tests.

    python3 models/randomize.py IN.onnx OUT.onnx --seed N

The onnx package's light model zoo (`light_*.onnx`) stores almost every weight as
`ConstantOfShape(0.02)`: every output channel of a layer computes the same thing, and most of the
classifiers answer a flat 0.001 softmax. Two engines agreeing on such a model proves little. This
script gives every Conv/Gemm/BatchNormalization parameter random values instead:

* Conv and Gemm weights: He-normal, N(0, sqrt(2 / fan_in));
* Conv and Gemm biases: N(0, 0.1);
* BatchNormalization: scale U(0.5, 1.5), bias N(0, 0.1), running mean N(0, 0.1),
  running variance U(0.5, 1.5);

(whether a parameter is stored as an initializer or produced by a ConstantOfShape node), and drops
a Softmax that produces a graph output: the output keeps its name but carries the logits, whose
differences are not squashed towards 0.001. Everything else (graph, input/output names and shapes,
IR version, opsets) is unchanged, so the copy takes the same model.toml as the original.

Deterministic: the same input file, seed and numpy/onnx versions give the same bytes.
"""

import argparse
import hashlib
import sys

import numpy as np
import onnx
from onnx import numpy_helper

# (op_type, input index) -> role of that input.
ROLES = {
    ("Conv", 1): "conv_weight",
    ("Conv", 2): "bias",
    ("Gemm", 1): "gemm_weight",
    ("Gemm", 2): "bias",
    ("BatchNormalization", 1): "bn_scale",
    ("BatchNormalization", 2): "bn_bias",
    ("BatchNormalization", 3): "bn_mean",
    ("BatchNormalization", 4): "bn_var",
}


def attribute(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def random_values(rng, role, shape, node):
    shape = tuple(int(d) for d in shape)
    if role == "conv_weight":
        fan_in = int(np.prod(shape[1:]))  # (C_in / group) * kernel size
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)
    if role == "gemm_weight":
        fan_in = shape[1] if attribute(node, "transB", 0) else shape[0]
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)
    if role in ("bias", "bn_bias", "bn_mean"):
        return rng.normal(0.0, 0.1, size=shape)
    if role in ("bn_scale", "bn_var"):
        return rng.uniform(0.5, 1.5, size=shape)
    raise ValueError(role)


def randomize(model, seed):
    graph = model.graph
    rng = np.random.default_rng(seed)
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}

    # Every parameter tensor with the first node that uses it in a known role, in graph order.
    params = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            role = ROLES.get((node.op_type, index))
            if role and name not in params:
                params[name] = (role, node)

    new_inits = []
    dropped_nodes = set()
    shape_inits = set()  # shape tensors of the ConstantOfShape nodes replaced
    made_from_nodes = set()  # parameters that were ConstantOfShape outputs
    counts = {}
    for name, (role, consumer) in params.items():
        if name in inits:
            shape = inits[name].dims
            dtype = numpy_helper.to_array(inits[name]).dtype
        elif name in producers and producers[name].op_type == "ConstantOfShape":
            const = producers[name]
            shape_name = const.input[0]
            if shape_name not in inits:
                sys.exit(f"randomize.py: ConstantOfShape {const.name!r} has a computed shape; not supported")
            shape = numpy_helper.to_array(inits[shape_name])
            value = attribute(const, "value", None)
            dtype = numpy_helper.to_array(value).dtype if value is not None else np.dtype(np.float32)
            if dtype.kind == "f":
                dropped_nodes.add(id(const))
                shape_inits.add(shape_name)
                made_from_nodes.add(name)
        else:
            continue  # computed in the graph or a graph input: not a parameter
        if dtype.kind != "f":
            continue
        values = random_values(rng, role, shape, consumer).astype(dtype)
        new_inits.append(numpy_helper.from_array(values, name))
        counts[role] = counts.get(role, 0) + 1

    kept_nodes = [n for n in graph.node if id(n) not in dropped_nodes]
    # A ConstantOfShape's shape tensor may feed other nodes too: keep those.
    shape_inits -= {i for node in kept_nodes for i in node.input}
    replaced = {t.name for t in new_inits}
    kept_inits = [t for t in graph.initializer if t.name not in shape_inits and t.name not in replaced]
    kept_inputs = [i for i in graph.input if i.name not in shape_inits]
    # IR version 3 lists every initializer among the graph inputs; keep that convention.
    if model.ir_version < 4 and any(i.name in inits for i in graph.input):
        kept_inputs += [
            onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
            for t in new_inits
            if t.name in made_from_nodes
        ]

    # Drop a Softmax that produces a graph output: its input takes over the output's name.
    outputs = {o.name for o in graph.output}
    softmax_dropped = []
    for node in list(kept_nodes):
        if node.op_type == "Softmax" and node.output[0] in outputs:
            logits, out = node.input[0], node.output[0]
            kept_nodes.remove(node)
            for other in kept_nodes:
                other.input[:] = [out if i == logits else i for i in other.input]
                other.output[:] = [out if o == logits else o for o in other.output]
            softmax_dropped.append(out)

    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept_inits + new_inits)
    del graph.input[:]
    graph.input.extend(kept_inputs)
    # Drop intermediate value_info: shapes of renamed tensors are no longer right.
    del graph.value_info[:]
    model.doc_string = (
        f"Random-weight copy of graph {graph.name!r} made by edgeinfer's models/randomize.py, seed {seed}; "
        f"softmax dropped from outputs {softmax_dropped} (they carry logits). For numerical tests only."
    )
    return counts, softmax_dropped


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args()
    model = onnx.load(args.input)
    counts, dropped = randomize(model, args.seed)
    onnx.checker.check_model(model)
    onnx.save(model, args.output)
    with open(args.output, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    summary = ", ".join(f"{n} {role}" for role, n in sorted(counts.items()))
    print(f"randomize.py: {args.output}: seed {args.seed}, {summary}; softmax dropped: {dropped or 'none'}; "
          f"sha256 {digest}")


if __name__ == "__main__":
    main()
