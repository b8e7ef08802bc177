"""Work and traffic of a compiled executable, read from its optimised HLO text.

XLA's `cost_analysis()` counts the body of a `while` loop once, so a step that scans 28
layers reports a fraction of its FLOPs. Here the HLO's call graph gives each
computation how many times it runs per call (a loop body: the enclosing count times
the loop's trip count: XLA's `known_trip_count`, or the bound its condition compares
the counter with, from the counter's start by its step; a loop whose count is only
known at run time, such as the engine's decode chunk and the cache pieces it reads,
gets the `unknown_trips` given for its nesting depth), which scales

  * the matmul FLOPs (2 x output elements x contracted size of every `dot`, and of the
    `convolution`s the TPU compiler turns dots into),
  * the bytes that unfused instructions read and write, and
  * the bytes each collective moves: all-gather (the gathered result), reduce-scatter,
    all-reduce, all-to-all and collective-permute (their operands), per device.

`corrected` applies the matmul and byte ratios (with vs without trip counts) to
`cost_analysis()`'s own totals, so the figures stay XLA's where XLA counts them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict
from typing import Iterator

import numpy as np

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
          "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b(" + "|".join(sorted(_BYTES, key=len, reverse=True)) + r")\[([\d,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*->.*\{\s*$")
_CALLS = re.compile(r"\b(calls|to_apply|body|condition|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_CONTRACT = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")
_DIM_LABELS = re.compile(r"dim_labels=\w*_(\w+)->")
_CONSTANT = re.compile(r"^[su](?:32|64)\[\]")  # loop counters: s32, or u32 in the compiler's collective-matmul loops
_NO_TRAFFIC = {"parameter", "tuple", "get-tuple-element", "constant", "bitcast", "while", "call",
               "conditional", "after-all", "partition-id", "replica-id", "opt-barrier"}


@dataclasses.dataclass
class _Op:
    name: str
    shape: str       # result shape text
    opcode: str
    operands: str    # the text inside the call's parentheses
    attrs: str


def _arrays(text: str) -> list[tuple[str, list[int]]]:
    return [(t, [int(d) for d in dims.split(",") if d]) for t, dims in _ARRAY.findall(text)]


def array_bytes(text: str) -> list[float]:
    """Bytes of each array in an HLO shape text (a tuple's elements in order)."""
    return [math.prod(dims) * _BYTES[t] for t, dims in _arrays(text)]


def shape_bytes(text: str) -> float:
    return float(sum(array_bytes(text)))


def _split_op(line: str) -> _Op | None:
    """`%name = SHAPE opcode(operands), attrs` -> its parts (None for other lines)."""
    m = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s+=\s+", line)
    if not m:
        return None
    rest = line[m.end():]
    if rest.startswith("("):
        depth, i = 0, 0
        for i, c in enumerate(rest):
            depth += c == "("
            depth -= c == ")"
            if depth == 0:
                break
        shape, rest = rest[:i + 1], rest[i + 1:].lstrip()
    else:
        shape, _, rest = rest.partition(" ")
    op = re.match(r"([\w\-]+)\(", rest)
    if not op:
        return None
    depth, start = 0, op.end() - 1
    end = start
    for end in range(start, len(rest)):
        depth += rest[end] == "("
        depth -= rest[end] == ")"
        if depth == 0:
            break
    return _Op(m[1], shape, op[1], rest[start + 1:end], rest[end + 1:])


def _computations(text: str) -> tuple[dict[str, list[_Op]], str]:
    comps: dict[str, list[_Op]] = {}
    entry, current = "", None
    for line in text.splitlines():
        h = _HEADER.match(line)
        if h:
            current = h[2]
            comps[current] = []
            if h[1]:
                entry = current
            continue
        if current is not None:
            if line.strip() == "}":
                current = None
                continue
            op = _split_op(line)
            if op:
                comps[current].append(op)
    return comps, entry


def _callees(op: _Op) -> Iterator[tuple[str, str]]:
    for kind, name in _CALLS.findall(op.attrs):
        yield kind, name
    for group in _BRANCHES.findall(op.attrs):
        for name in group.split(","):
            yield "branch", name.strip().lstrip("%")


@dataclasses.dataclass(frozen=True)
class Work:
    """Per-device figures of one call of an executable."""

    dot_flops: float          # with trip counts
    dot_flops_once: float     # each loop body once (as cost_analysis counts)
    bytes: float
    bytes_once: float
    collectives: dict[str, float]   # kind -> bytes per call (with trip counts)

    def corrected(self, flops: float, bytes_accessed: float) -> tuple[float, float]:
        """cost_analysis()'s FLOPs and bytes scaled by the trip-count ratios."""
        f = flops * self.dot_flops / self.dot_flops_once if self.dot_flops_once else flops
        b = bytes_accessed * self.bytes / self.bytes_once if self.bytes_once else bytes_accessed
        return f, b


def _names(operands: str) -> list[str]:
    return [n.strip().lstrip("%") for n in re.sub(r"/\*.*?\*/", "", operands).split(",") if n.strip()]


def _tuple_index(name: str, ops: dict[str, _Op]) -> int | None:
    """The tuple index `name` reads from the computation's parameter (through copies)."""
    op = ops.get(name)
    while op is not None and op.opcode in ("copy", "bitcast"):
        op = ops.get(_names(op.operands)[0])
    if op is None or op.opcode != "get-tuple-element":
        return None
    found = re.search(r"index=(\d+)", op.attrs)
    return int(found[1]) if found else None


def _constant(name: str, ops: dict[str, _Op]) -> int | None:
    op = ops.get(name)
    if op is None or op.opcode != "constant" or not _CONSTANT.match(op.shape):
        return None
    return int(op.operands) if op.operands.lstrip("-").isdigit() else None


def _counted_loop(loop: _Op, caller: list[_Op], comps: dict[str, list[_Op]]) -> int | None:
    """The trip count of a loop whose condition is `counter < constant`: from the
    counter's start (a constant in the loop's initial tuple, else 0) and its step (the
    constant the body adds to it, else 1). The TPU compiler's collective-matmul loops
    run two windows per trip and step their counter by 2."""
    callees = dict(_callees(loop))
    cond = {op.name: op for op in comps.get(callees.get("condition", ""), [])}
    body_ops = comps.get(callees.get("body", ""), [])
    for op in cond.values():
        if op.opcode != "compare" or "direction=LT" not in op.attrs:
            continue
        names = _names(op.operands)
        bound = _constant(names[1], cond) if len(names) == 2 else None
        index = _tuple_index(names[0], cond) if bound is not None else None
        if index is None:
            continue
        body = {o.name: o for o in body_ops}
        step = 1
        root = body_ops[-1] if body_ops and body_ops[-1].opcode == "tuple" else None
        nxt = body.get(_names(root.operands)[index]) if root is not None else None
        if nxt is not None and nxt.opcode == "add":
            a, b = _names(nxt.operands)
            step = _constant(b, body) if _tuple_index(a, body) == index else _constant(a, body)
            step = step or 1
        caller_ops = {o.name: o for o in caller}
        init_tuple = caller_ops.get(_names(loop.operands)[0]) if loop.operands else None
        start = 0
        if init_tuple is not None and init_tuple.opcode == "tuple":
            start = _constant(_names(init_tuple.operands)[index], caller_ops) or 0
        return max(0, -(-(bound - start) // step))
    return None


def _trip(op: _Op, caller: list[_Op], comps: dict[str, list[_Op]]) -> int | None:
    found = _TRIP.search(op.attrs)
    if found:
        return int(found[1])
    return _counted_loop(op, caller, comps)


def analyse(text: str, unknown_trips: tuple[int, ...] = ()) -> Work:
    """FLOPs, bytes and collective bytes of an optimised HLO module's text.

    `unknown_trips[k]`: the trip count assumed for a loop with a run-time count nested
    inside k such loops (1 beyond the tuple)."""
    comps, entry = _computations(text)
    mult: dict[str, float] = defaultdict(float)
    once: dict[str, float] = defaultdict(float)
    depth: dict[str, int] = defaultdict(int)
    fused: set[str] = set()
    mult[entry], once[entry] = 1.0, 1.0
    order = _topological(comps, entry)
    for name in order:
        for op in comps.get(name, []):
            trip, unknown = 1, 0
            if op.opcode == "while":
                trip = _trip(op, comps[name], comps)
                if trip is None:
                    k = depth[name]
                    trip, unknown = (unknown_trips[k] if k < len(unknown_trips) else 1), 1
            for kind, callee in _callees(op):
                loop = kind in ("body", "condition")
                mult[callee] += mult[name] * (trip if loop else 1)
                once[callee] += once[name]
                depth[callee] = max(depth[callee], depth[name] + (unknown if loop else 0))
                if kind in ("calls", "to_apply") and op.opcode not in ("call", "async-start"):
                    fused.add(callee)
    flops = flops_once = traffic = traffic_once = 0.0
    coll: dict[str, float] = defaultdict(float)
    for name in order:
        shapes = {op.name: op.shape for op in comps.get(name, [])}
        for op in comps.get(name, []):
            if op.opcode in ("dot", "convolution"):
                f = _dot_flops(op, shapes)
                flops += f * mult[name]
                flops_once += f * once[name]
            if name not in fused and op.opcode not in _NO_TRAFFIC and not op.opcode.endswith("-done"):
                b = _traffic(op, shapes, comps)
                traffic += b * mult[name]
                traffic_once += b * once[name]
            kind = _collective(op.opcode)
            if kind:
                coll[kind] += _collective_bytes(kind, op, shapes) * mult[name]
    return Work(flops, flops_once, traffic, traffic_once, {k: coll.get(k, 0.0) for k in COLLECTIVES})


def _topological(comps: dict[str, list[_Op]], entry: str) -> list[str]:
    """Callers before callees, from the entry computation."""
    seen: set[str] = set()
    post: list[str] = []

    def visit(name: str) -> None:
        if name in seen or name not in comps:
            return
        seen.add(name)
        for op in comps[name]:
            for _, callee in _callees(op):
                visit(callee)
        post.append(name)

    visit(entry)
    return post[::-1]


_SLICING = ("dynamic-slice", "slice", "gather")


def _operand_names(op: _Op) -> list[str]:
    return [m.lstrip("%") for m in re.findall(r"%[\w.\-]+", op.operands)] or \
        [n.strip() for n in op.operands.split(",") if n.strip()]


def _traffic(op: _Op, shapes: dict[str, str], comps: dict[str, list[_Op]]) -> float:
    """Bytes an unfused instruction reads and writes: an operand that is only sliced
    counts as the slices read, an in-place update as the update written (so a decode
    step reading one block of a 20 GB cache is not charged the whole cache)."""
    names = _operand_names(op)
    if op.opcode in _SLICING:
        return 2 * shape_bytes(op.shape)
    if op.opcode == "dynamic-update-slice" and len(names) > 1:
        return 2 * shape_bytes(shapes.get(names[1], ""))
    body = comps.get(dict(_callees(op)).get("calls", ""), []) if op.opcode == "fusion" else []
    if not body:
        return shape_bytes(op.shape) + shape_bytes(_operand_shapes(op, shapes))
    params = {int(p.operands): p.name for p in body if p.opcode == "parameter" and p.operands.isdigit()}
    inner = {p.name: p.shape for p in body}
    total = 0.0
    for i, outer in enumerate(names):
        users = [u for u in body if params.get(i) in _operand_names(u)]
        if users and all(u.opcode in _SLICING and _operand_names(u)[0] == params.get(i) for u in users):
            total += sum(shape_bytes(u.shape) for u in users)
        elif users and all(u.opcode == "dynamic-update-slice" and _operand_names(u)[0] == params.get(i)
                           for u in users):
            total += 0.0  # the buffer updated in place: only the update is written (below)
        else:
            total += shape_bytes(shapes.get(outer, ""))
    root = body[-1]
    if root.opcode == "dynamic-update-slice":
        total += shape_bytes(inner.get(_operand_names(root)[1], ""))
    else:
        total += shape_bytes(op.shape)
    return total


def _operand_shapes(op: _Op, shapes: dict[str, str]) -> str:
    """The operands' shapes: printed inline, or looked up by name."""
    if _ARRAY.search(op.operands):
        return op.operands
    names = re.findall(r"%?([\w.\-]+)", op.operands)
    return " ".join(shapes.get(n, "") for n in names)


def _dot_flops(op: _Op, shapes: dict[str, str]) -> float:
    """2 x output elements x the size of what each output element sums over."""
    out = _arrays(op.shape)
    args = _arrays(_operand_shapes(op, shapes))
    if not out or len(args) < (1 if op.opcode == "dot" else 2):
        return 0.0
    contracted = 1
    if op.opcode == "dot":
        m = _CONTRACT.search(op.attrs)
        if not m:
            return 0.0
        for d in (int(x) for x in m[1].split(",") if x):
            contracted *= args[0][1][d]
    else:
        return _conv_flops(op, out[0][1], args[0][1], args[1][1])
    n = 1
    for d in out[0][1]:
        n *= d
    return 2.0 * n * contracted


def _window(attrs: str) -> dict[str, list[str]]:
    m = re.search(r"window=\{([^}]*)\}", attrs)
    return {k: v.split("x") for k, v in (kv.split("=") for kv in m[1].split())} if m else {}


def _valid_pairs(out: int, size: int, stride: int, lo: int, lhs_dilate: int, rhs_dilate: int,
                 extent: int) -> int:
    """(output position, kernel position) pairs of one spatial dim that meet an input element."""
    o = np.arange(out)[:, None]
    k = np.arange(size)[None, :]
    pos = o * stride + k * rhs_dilate - lo
    return int(((pos >= 0) & (pos % lhs_dilate == 0) & (pos // lhs_dilate < extent)).sum())


def _conv_flops(op: _Op, out: list[int], lhs: list[int], rhs: list[int]) -> float:
    """2 x batch x output features x input features x the valid window pairs per spatial
    dim (the TPU compiler writes batched matmuls as dilated, strided convolutions)."""
    m = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", op.attrs)
    if not m or len(m[1]) != len(lhs) or len(m[2]) != len(rhs) or len(m[3]) != len(out):
        return 0.0
    lhs_l, rhs_l, out_l = m[1], m[2], m[3]
    w = _window(op.attrs)
    n = 2.0 * out[out_l.index("b")] * out[out_l.index("f")] * rhs[rhs_l.index("i")]
    for i, d in enumerate(sorted(c for c in out_l if c.isdigit())):
        get = lambda key, default: int(w[key][i]) if key in w else default  # noqa: E731
        lo = int(w["pad"][i].split("_")[0]) if "pad" in w else 0
        n *= _valid_pairs(out[out_l.index(d)], rhs[rhs_l.index(d)], get("stride", 1), lo,
                          get("lhs_dilate", 1), get("rhs_dilate", 1), lhs[lhs_l.index(d)])
    return n


def _collective(opcode: str) -> str | None:
    base = opcode.removesuffix("-start")
    return base if base in COLLECTIVES and not opcode.endswith("-done") else None


def _collective_bytes(kind: str, op: _Op, shapes: dict[str, str]) -> float:
    if kind == "all-gather":
        sizes = [shape_bytes(f"{t}[{','.join(map(str, d))}]") for t, d in _arrays(op.shape)]
        return max(sizes, default=0.0) if op.opcode.endswith("-start") else sum(sizes)
    return shape_bytes(_operand_shapes(op, shapes))
