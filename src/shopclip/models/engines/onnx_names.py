"""Deterministic tensor names for an exported ONNX graph.

``torch.export``'s ONNX exporter names intermediate tensors with running counters
(``mul_495``, ``val_589``) and emits nodes in an order that changes from one process to the
next. Static int8 calibration ranges are keyed by tensor name, so the ranges a model ships
(or a cache built on another machine) stopped matching a fresh export of the very same
tower: a fresh install recalibrated on whatever photos it had, or fell back to fp32.

:func:`canonicalize` renames every intermediate tensor after *what computes it*: a hash of
the node's op, attributes and (already canonical) inputs, so the same computation gets the
same name in every export; nodes come out in one topological order (ties broken by name).
Graph inputs, outputs and parameter initializers (dotted module paths) keep their names;
anonymous constants are named by their content.
"""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = ["canonicalize"]


def _h(*parts: bytes | str) -> str:
    d = hashlib.sha1()
    for p in parts:
        d.update(p if isinstance(p, bytes) else p.encode())
        d.update(b"\x00")
    return d.hexdigest()[:16]


def canonicalize(model: Any) -> dict[str, str]:
    """Rename `model`'s tensors and nodes in place; returns {old name: new name} for renamed tensors.

    A graph with control flow (subgraph attributes) is left as it is (returns {}): its inner
    graphs would need the same treatment and the towers shopclip exports have none.
    """
    from onnx import AttributeProto, numpy_helper

    g = model.graph
    if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        return {}
    keep = {v.name for v in g.input} | {v.name for v in g.output} | {""}
    rename: dict[str, str] = {}
    seen_init: set[str] = set()
    inits = []
    for init in g.initializer:
        if init.name in keep or "." in init.name:
            new = init.name
        else:
            new = "const_" + _h(str(init.data_type), str(list(init.dims)), numpy_helper.to_array(init).tobytes())
        rename[init.name] = new
        if new not in seen_init:
            seen_init.add(new)
            init.name = new
            inits.append(init)
    del g.initializer[:]
    g.initializer.extend(inits)

    # Name nodes in dependency order; a node whose name is already taken computes exactly what
    # the earlier one does (same op, attributes, inputs), so it is dropped and its outputs reused.
    producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
    named: list[Any] = []
    done: set[int] = set()
    open_: set[int] = set()  # on the current path: meeting one again is a cycle
    taken: set[str] = set()

    def visit(i: int) -> None:
        stack = [(i, False)]
        while stack:
            j, ready = stack.pop()
            if j in done:
                continue
            node = g.node[j]
            if not ready:
                if j in open_:
                    raise ValueError("the ONNX graph has a cycle")
                open_.add(j)
                stack.append((j, True))
                stack.extend((producer[x], False) for x in node.input if x in producer and producer[x] not in done)
                continue
            open_.discard(j)
            done.add(j)
            inputs = [rename.get(x, x) for x in node.input]
            attrs = b"".join(a.SerializeToString(deterministic=True) for a in sorted(node.attribute, key=lambda a: a.name))
            base = _h(node.domain, node.op_type, attrs, *inputs)
            stem = f"{node.op_type.lower()}_{base}"
            outs = [o if o in keep else f"{stem}_{k}" if k else stem for k, o in enumerate(node.output)]
            for old, new in zip(node.output, outs, strict=True):
                if old:
                    rename[old] = new
            del node.input[:]
            node.input.extend(inputs)
            if stem in taken and not (set(node.output) & keep):
                continue  # a duplicate computation
            node.name = stem if stem not in taken else f"{stem}_{len(taken)}"
            taken.add(node.name)
            del node.output[:]
            node.output.extend(outs)
            named.append(node)

    for i in range(len(g.node)):
        visit(i)
    order = _topological(named)
    del g.node[:]
    g.node.extend(order)
    for vi in g.value_info:
        vi.name = rename.get(vi.name, vi.name)
    return {k: v for k, v in rename.items() if k != v}


def _topological(nodes: list[Any]) -> list[Any]:
    """Kahn's order with ties broken by node name: the same graph always comes out in the same order."""
    import heapq

    producer = {o: n.name for n in nodes for o in n.output}
    by_name = {n.name: n for n in nodes}
    waiting = {n.name: {producer[x] for x in n.input if x in producer} for n in nodes}
    users: dict[str, list[str]] = {}
    for name, deps in waiting.items():
        for d in deps:
            users.setdefault(d, []).append(name)
    ready = [name for name, deps in waiting.items() if not deps]
    heapq.heapify(ready)
    out = []
    while ready:
        name = heapq.heappop(ready)
        out.append(by_name[name])
        for u in users.get(name, []):
            waiting[u].discard(name)
            if not waiting[u]:
                heapq.heappush(ready, u)
    if len(out) != len(nodes):
        raise ValueError("the ONNX graph has a cycle")
    return out
