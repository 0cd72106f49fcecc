"""What a compiled XLA step is made of, and where its time goes: read from its optimised HLO and a profile.

    counts = convolutions(compiled.as_text())        # convolutions by form, layout changes beside them
    table = time_by_category(trace_dir, hlo_text, steps)  # op time per category, from a jax.profiler trace
    python benchmarks/step_anatomy.py HLO_FILE [--trace DIR --steps N]   # the same from files

Used by `benchmarks/measure.py` (`--analyse`) on the lightnets train step. On a GPU every
convolution should be a cuDNN call (`__cudnn$conv...` custom calls, or a cuDNN fusion holding a
`convolution`) with no transpose or copy feeding it or fed by it: a layout change beside a
convolution is time spent converting NHWC to what the kernel wants. On CPU, lightnets writes
depthwise and pointwise convolutions as shifted multiply-adds and matrix products
(`lightnets.models.layers.Conv2d`), so few `convolution` ops remain and many `dot`s appear.

The HLO text is parsed just enough for that: computations, and per instruction its name, opcode,
operands and attributes. Profile events are matched to instructions by name; those that match
nothing are classed by their name alone (cuDNN and cuBLAS kernels, say) and counted apart.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re

CATEGORIES = (
    "convolution",
    "matmul",
    "elementwise fusion",
    "reduction fusion",
    "copy/transpose",
    "collective",
    "custom call (other)",
    "other",
)
_COLLECTIVES = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "collective-broadcast",
)
_FREE = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all", "partition-id", "replica-id"}
# Ops whose bodies run as ops of their own (a loop, a branch, a command buffer, an async wrapper):
# their own time, outside their bodies' ops, is "other".
_CONTROL = ("while", "conditional", "call", "async-start", "async-update", "async-done")
_LAYOUT = {"copy", "transpose"}


@dataclasses.dataclass
class Instruction:
    name: str
    opcode: str
    operands: list[str]
    attributes: str

    @property
    def target(self) -> str:  # a custom call's target
        m = re.search(r'custom_call_target="([^"]+)"', self.attributes)
        return m.group(1) if m else ""

    @property
    def fusion_kind(self) -> str:  # a library fusion's kind: "__cudnn$fusion" on GPU, "__ynn_fusion" on CPU
        m = re.search(r'"kind":"([^"]+)"', self.attributes)
        return m.group(1) if m else ""

    @property
    def called(self) -> list[str]:
        return re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", self.attributes)

    @property
    def inlined(self) -> list[str]:
        """Computations that run inside this op, not as ops of their own: a fusion's body, a reducer."""
        return [] if self.opcode in _CONTROL else self.called


@dataclasses.dataclass
class Computation:
    name: str
    instructions: dict[str, Instruction]
    root: str


def _closing(text: str, start: int) -> int:
    """Index of the parenthesis closing the one at `start`."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    return len(text) - 1


def _instruction(line: str) -> tuple[Instruction, bool] | None:
    m = re.match(r"\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*", line)
    if not m:
        return None
    rest = line[m.end() :]
    # Skip the result shape: a tuple "(...)" or one "f32[2,3]{1,0}" token.
    shape_end = _closing(rest, 0) + 1 if rest.startswith("(") else rest.find(" ")
    rest = rest[shape_end:].lstrip()
    op = re.match(r"([\w\-]+)\(", rest)
    if not op:
        return None
    close = _closing(rest, op.end() - 1)
    operands = re.findall(r"%([\w.\-]+)", rest[op.end() : close])
    return Instruction(m.group(2), op.group(1), operands, rest[close + 1 :]), bool(m.group(1))


def parse(hlo_text: str) -> dict[str, Computation]:
    """The computations of an HLO module's text (`compiled.as_text()`), by name."""
    computations, current = {}, None
    for line in hlo_text.splitlines():
        header = re.match(r"\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if current is None and header and " = " not in line:
            current = Computation(header.group(1), {}, "")
            continue
        if current is not None and line.strip() == "}":
            computations[current.name] = current
            current = None
            continue
        if current is not None:
            parsed = _instruction(line)
            if parsed:
                instruction, is_root = parsed
                current.instructions[instruction.name] = instruction
                if is_root:
                    current.root = instruction.name
    return computations


def _top_level(computations: dict[str, Computation]) -> dict[str, Instruction]:
    """Instructions that run as ops of their own: not inside a fusion or a reducer (a loop's body
    or a command buffer's ops are)."""
    called = {c for comp in computations.values() for i in comp.instructions.values() for c in i.inlined}
    return {n: i for comp in computations.values() if comp.name not in called for n, i in comp.instructions.items()}


def _body_ops(instruction: Instruction, computations: dict[str, Computation]) -> tuple[set[str], str, set[str]]:
    """A fusion's opcodes, its root's opcode (under any bitcast) and its custom-call targets."""
    ops, root, targets = set(), "", set()
    for name in instruction.called:
        comp = computations.get(name)
        if comp is None:
            continue
        ops |= {i.opcode for i in comp.instructions.values()}
        targets |= {i.target for i in comp.instructions.values() if i.opcode == "custom-call"}
        r = comp.instructions.get(comp.root)
        while r is not None and r.opcode == "bitcast" and r.operands:
            r = comp.instructions.get(r.operands[0])
        root = r.opcode if r is not None else ""
    return ops, root, targets


def _is_conv_target(target: str) -> bool:
    return target.startswith("__cudnn$conv") or "convolution" in target.lower()


def category(instruction: Instruction, computations: dict[str, Computation]) -> str | None:
    """The op category of a top-level instruction; None for those that cost nothing (bitcasts, tuples)."""
    op = instruction.opcode
    if op in _FREE:
        return None
    if op.startswith(_COLLECTIVES):
        return "collective"
    if op in _CONTROL:
        return "other"
    if op == "convolution":
        return "convolution"
    if op == "dot":
        return "matmul"
    if op == "custom-call":
        target = instruction.target
        if _is_conv_target(target):
            return "convolution"
        if any(k in target.lower() for k in ("gemm", "matmul", "cublas")):
            return "matmul"
        return "custom call (other)"
    if op in _LAYOUT or op.startswith("copy-"):
        return "copy/transpose"
    if op == "fusion":
        ops, root, targets = _body_ops(instruction, computations)
        if "convolution" in ops or any(_is_conv_target(t) for t in targets):
            return "convolution"
        if "dot" in ops:
            return "matmul"
        if root in _LAYOUT:
            return "copy/transpose"
        if ops & {"reduce", "reduce-window", "scatter", "select-and-scatter"}:
            return "reduction fusion"
        return "elementwise fusion"
    return "other"


def _by_name(name: str) -> str:
    """The category of a profile event that matches no instruction (a library kernel), from its name."""
    n = name.lower()
    for keys, cat in (
        (("conv", "cudnn", "xmma", "fprop", "dgrad", "wgrad", "implicit_gemm"), "convolution"),
        (("gemm", "matmul", "dot"), "matmul"),
        (("nccl", "all-reduce", "all_reduce", "allreduce", "all-gather", "reduce-scatter"), "collective"),
        (("transpose", "copy"), "copy/transpose"),
        (("reduce",), "reduction fusion"),
        (("fusion",), "elementwise fusion"),
    ):
        if any(k in n for k in keys):
            return cat
    return "other"


def convolutions(hlo_text: str) -> dict:
    """Convolutions of an optimised HLO module by form, and the layout changes next to them.

    Returns counts: `library` (convolutions handed to a library: custom calls by target, e.g.
    `__cudnn$convForward`, and library fusions holding a convolution by kind, e.g.
    `__cudnn$fusion`, or XLA:CPU's `__ynn_fusion` for YNNPACK), `xla_convolution` (a
    `convolution` op XLA's own emitter runs, fused or not),
    `dot` (matrix products, fused or not), `layout_in` (convolution operands produced by a
    transpose, a copy or a fusion ending in one) and `layout_out` (convolution results consumed
    by one), following bitcasts and tuple elements, which cost nothing.
    """
    computations = parse(hlo_text)
    top = _top_level(computations)
    library: dict[str, int] = {}
    xla_convs = dots = 0
    convs = []
    for instruction in top.values():
        op = instruction.opcode
        if op == "custom-call" and _is_conv_target(instruction.target):
            library[instruction.target] = library.get(instruction.target, 0) + 1
            convs.append(instruction.name)
        elif op == "convolution":
            xla_convs += 1
            convs.append(instruction.name)
        elif op == "dot":
            dots += 1
        elif op == "fusion":
            ops, _, targets = _body_ops(instruction, computations)
            if "convolution" in ops or any(_is_conv_target(t) for t in targets):
                if "kind=kCustom" in instruction.attributes:  # a library's fusion
                    kind = instruction.fusion_kind or "kCustom fusion"
                    library[kind] = library.get(kind, 0) + 1
                else:
                    xla_convs += 1
                convs.append(instruction.name)
            dots += "dot" in ops

    def is_layout(instruction: Instruction | None) -> bool:
        if instruction is None:
            return False
        if instruction.opcode in _LAYOUT:
            return True
        return instruction.opcode == "fusion" and _body_ops(instruction, computations)[1] in _LAYOUT

    def producer(name: str) -> Instruction | None:
        i = top.get(name)
        while i is not None and i.opcode in ("bitcast", "get-tuple-element") and i.operands:
            i = top.get(i.operands[0])
        return i

    users: dict[str, list[Instruction]] = {}
    for instruction in top.values():
        for operand in instruction.operands:
            users.setdefault(operand, []).append(instruction)

    def consumers(name: str) -> list[Instruction]:
        found = []
        for user in users.get(name, []):
            if user.opcode in ("bitcast", "get-tuple-element"):
                found += consumers(user.name)
            else:
                found.append(user)
        return found

    layout_in = sum(is_layout(producer(o)) for c in convs for o in top[c].operands)
    layout_out = sum(is_layout(u) for c in convs for u in consumers(c))
    return {
        "library": library,
        "xla_convolution": xla_convs,
        "dot": dots,
        "layout_in": layout_in,
        "layout_out": layout_out,
        "top_level_ops": sum(category(i, computations) is not None for i in top.values()),
    }


def _events(trace_dir: str):
    """(line kind, events) of the newest xplane file under `trace_dir`: XLA's op lines only."""
    import jax

    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    if not files:
        raise FileNotFoundError(f"no *.xplane.pb under {trace_dir}")
    data = jax.profiler.ProfileData.from_file(files[-1])
    device_lines, host_lines = [], []
    for plane in data.planes:
        if plane.name.startswith("/device:"):
            lines = list(plane.lines)
            ops = [line for line in lines if line.name == "XLA Ops"]
            device_lines += ops or [line for line in lines if line.name.startswith("Stream")]
        elif plane.name == "/host:CPU":
            host_lines += [line for line in plane.lines if line.name.startswith("tf_XLA")]
    return ("device", device_lines) if device_lines else ("host", host_lines)


def _op_name(event) -> str:
    """The HLO instruction an event is of: its `hlo_op` statistic (GPU kernels), else its name."""
    for key, value in event.stats:
        if key == "hlo_op" and isinstance(value, str):
            return value
    return event.name.lstrip("%").split(" ")[0]


def _add_self_times(spans: list[tuple[float, float, str]], totals: dict[str, float]) -> None:
    """Adds each span's self time (its duration less that of the spans nested in it) to its category."""
    spans = sorted(spans, key=lambda s: (s[0], -s[1]))
    stack = []  # open spans: [start, end, category, time of the spans nested in it]

    def close(entry):
        start, end, cat, nested = entry
        totals[cat] += max(end - start - nested, 0.0)
        if stack:
            stack[-1][3] += end - start

    for start, stop, cat in spans:
        while stack and stack[-1][1] <= start:
            close(stack.pop())
        stack.append([start, stop, cat, 0.0])
    while stack:
        close(stack.pop())


def time_by_category(trace_dir: str, hlo_text: str, steps: int) -> dict:
    """Op time per step and its share, by category, from a `jax.profiler` trace of `steps` steps.

    On a GPU: the device's XLA op events (their device time). On CPU: the events of XLA's
    threads named after an instruction (thread time: an op split over two threads counts twice).
    An event nested in another of the same line (a loop's body in its `while`) counts as itself,
    and the outer one keeps only its self time. Events on a device that match no instruction are
    classed by name (`unmatched_ms_per_step`); on CPU they are the runtime's own and left out.
    """
    computations = parse(hlo_text)
    top = _top_level(computations)
    kind, lines = _events(trace_dir)
    totals = dict.fromkeys(CATEGORIES, 0.0)
    unmatched = 0.0
    for line in lines:
        spans = []
        for event in line.events:
            instruction = top.get(_op_name(event))
            if instruction is not None:
                cat = category(instruction, computations)
            elif kind == "device":
                cat = _by_name(event.name)
                unmatched += event.duration_ns
            else:
                continue  # host threads' other events: the runtime's own, the Eigen pool's inner tasks
            if cat is not None:
                spans.append((event.start_ns, event.start_ns + event.duration_ns, cat))
        _add_self_times(spans, totals)
    total = sum(totals.values())
    rows = {
        cat: {"ms_per_step": ns / 1e6 / steps, "share": ns / total if total else 0.0}
        for cat, ns in totals.items()
        if ns > 0
    }
    return {
        "source": "device op time" if kind == "device" else "XLA threads' op time (CPU)",
        "steps": steps,
        "total_ms_per_step": total / 1e6 / steps,
        "unmatched_ms_per_step": unmatched / 1e6 / steps,
        "categories": rows,
    }


def main(argv=None) -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser(description="An optimised HLO module's convolutions, and its profile by category.")
    parser.add_argument("hlo", help="a module's optimised HLO text (compiled.as_text(), or XLA_FLAGS=--xla_dump_to)")
    parser.add_argument("--trace", default="", help="a jax.profiler trace folder of steps of that module")
    parser.add_argument("--steps", type=int, default=1, help="steps in the trace")
    args = parser.parse_args(argv)
    with open(args.hlo) as f:
        text = f.read()
    out = {"convolutions": convolutions(text)}
    if args.trace:
        out["profile"] = time_by_category(args.trace, text, args.steps)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
