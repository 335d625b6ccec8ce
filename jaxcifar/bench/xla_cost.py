"""What XLA says about a compiled step: its FLOPs, the device memory one call takes, how
many kernels one call launches, and (from XLA:GPU's thunk sequence) which of them run as CUDA
graphs. (Compiling it, timed: `compiling.compile_timed`.)"""

from __future__ import annotations

import collections
import math
import re
from collections.abc import Iterator
from typing import Any


def flops(executable: Any) -> float | None:
    """FLOPs of one call by XLA's cost analysis, or None where the backend gives none.

    `cost_analysis()` returns a dict on current JAX and a one-element list of dicts on
    older versions; XLA counts a multiply-add as 2 FLOPs.
    """
    analysis = executable.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    value = (analysis or {}).get("flops")
    return None if value is None or value < 0 else float(value)


def program_memory_bytes(executable: Any) -> int | None:
    """Bytes of device memory one call of a compiled program takes by XLA's buffer
    assignment (`memory_analysis()`): its arguments, outputs and temporaries, an output
    that reuses a donated argument's buffer counted once; None where the backend gives no
    analysis. A property of the program, unlike the device's `peak_bytes_in_use`, which
    never goes down in a process: after a large case every later case would read as large."""
    stats = executable.memory_analysis()
    names = ("argument", "output", "alias", "temp")
    sizes = [getattr(stats, f"{name}_size_in_bytes", None) for name in names]
    if None in sizes:  # no analysis (None), or one of another shape: the analysis is unstable API
        return None
    argument, output, alias, temp = sizes
    return int(argument + output - alias + temp)


# Instructions that only name, pick or reinterpret values: no device kernel runs for them.
_BOOKKEEPING = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast"}
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%[\w.\-]+ = (.*)$")


def hlo_computations(hlo_text: str) -> tuple[str, dict[str, list[str]]]:
    """(name of the entry computation, {computation name: its instruction lines}) of an
    optimised HLO module's text (`compiled.as_text()`)."""
    computations: dict[str, list[str]] = {}
    entry, current = "", None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            current = computations.setdefault(header.group(1), [])
            entry = header.group(1) if line.startswith("ENTRY ") else entry
        elif line == "}":
            current = None
        elif current is not None and _INSTRUCTION.match(line):
            current.append(line)
    return entry, computations


def _parts(instruction: str) -> tuple[str, str, str]:
    """(result shape, opcode, the rest from the operand list's "(" on) of one instruction
    line; a tuple shape holds spaces, so it ends at its closing parenthesis."""
    rest = _INSTRUCTION.match(instruction).group(1)
    shape = rest[: _closing(rest) + 1] if rest.startswith("(") else rest.split(" ", 1)[0]
    opcode, arguments = rest[len(shape) :].strip().split("(", 1)
    return shape, opcode, "(" + arguments


def _opcode(instruction: str) -> str:
    return _parts(instruction)[1]


def _operands(instruction: str) -> list[str]:
    """The names of one instruction line's operands."""
    arguments = _parts(instruction)[2]
    return re.findall(r"%([\w.\-]+)", arguments[: _closing(arguments)])


def _closing(text: str) -> int:
    """The index of the parenthesis that closes the one `text` starts with."""
    depth = 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return i
    raise ValueError(f"unbalanced parentheses in HLO: {text[:80]}")


def kernel_counts(hlo_text: str, *, loop_body: bool = False,
                  by_kind: bool = False) -> collections.Counter:  # fmt: skip
    """How many instructions of each opcode that launch work (fusion, dot, convolution,
    custom-call, copy, ...; not parameters, constants or tuple plumbing) one call runs: those
    of the entry computation, or with `loop_body` those of the body of the step loop: the
    while loop the entry runs with the largest body (a `lax.scan` over training steps; the
    entry's other loops are small ones such as XLA:CPU's rolled random-number rounds). On a
    GPU each counted instruction is about one kernel launch; a fused computation counts as
    its one `fusion` call, a loop nested in the counted computation as one `while`. A `call`
    counts as what its computation runs: XLA wraps instructions in calls that launch nothing
    themselves (XLA:CPU's outlined parts, and on GPUs the command buffers that replay a
    sequence of kernels as one CUDA graph, whose kernels still each run). With `by_kind`,
    a fusion counts under its kind ("fusion kLoop"; on GPUs "fusion kCustom" is mostly a
    Triton GEMM) and a custom call under its target ("custom-call __cudnn$convForward")."""
    entry, computations = hlo_computations(hlo_text)
    name = _step_loop(computations, entry)[1] if loop_body else entry
    return _count_opcodes(computations, name, by_kind)


def loop_trip_count(hlo_text: str) -> int | None:
    """The trip count XLA proved for the step loop (as `kernel_counts` picks it), or None
    where it proved none. With one, XLA:GPU launches the body that many times; without,
    every iteration computes the loop's condition and copies it to the host, which waits
    for it before launching the next."""
    entry, computations = hlo_computations(hlo_text)
    match = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', _step_loop(computations, entry)[0])
    return int(match[1]) if match else None


def _step_loop(computations: dict[str, list[str]], entry: str) -> tuple[str, str]:
    """(the `while` instruction line, its body's name) of the step loop; ValueError when the
    program runs no while loop."""
    loops = list(_loops(computations, entry))
    if not loops:
        raise ValueError("the program runs no while loop")
    return max(loops, key=lambda loop: len(computations[loop[1]]))


def _count_opcodes(computations: dict[str, list[str]], name: str,
                   by_kind: bool) -> collections.Counter:  # fmt: skip
    counts: collections.Counter = collections.Counter()
    for line in _kernel_lines(computations, name):
        opcode = _opcode(line)
        kind = re.search(r'(?:kind=|custom_call_target=")([\w$.\-]+)', line)
        counts[f"{opcode} {kind[1]}" if by_kind and kind else opcode] += 1
    return counts


def _kernel_lines(computations: dict[str, list[str]], name: str) -> Iterator[str]:
    """The instruction lines of computation `name` that launch work, looking inside the
    computations it `call`s (which launch nothing themselves): not parameters, constants or
    tuple plumbing; a nested loop is one `while` line."""
    for line in computations[name]:
        opcode, called = _opcode(line), _called_computation(line)
        if opcode == "call" and called in computations:
            yield from _kernel_lines(computations, called)
        elif opcode not in _BOOKKEEPING:
            yield line


def kernel_bytes(hlo_text: str, *, loop_body: bool = False) -> int:
    """Bytes the kernels of one call (or with `loop_body`, of one iteration of the step loop,
    as `kernel_counts` picks it) read and write: each counted instruction's result plus its
    operands, where a fusion that only slices or gathers from an operand (a batch from the
    training set) counts what it takes, and one that updates a slice of a buffer in place
    counts the update, not the buffer. A model of memory traffic, not a measurement: every
    kernel reads each operand once from memory and writes its result, what a memory-bound
    kernel does on a GPU when its operands are not in the L2 cache. A loop nested in the
    counted computation counts nothing."""
    entry, computations = hlo_computations(hlo_text)
    name = _step_loop(computations, entry)[1] if loop_body else entry
    return _computation_bytes(computations, name)


# Bytes per element of each HLO element type (pred and the 8-bit types 1; token 0).
_ELEMENT_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                  "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
                  "c128": 16}  # fmt: skip
_ARRAY_SHAPE = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+\w*)?)\[([\d,]*)\]")
_DEFINITION = re.compile(r"^\s+(?:ROOT )?%([\w.\-]+) = ")
_SLICING = {"slice", "dynamic-slice", "gather"}


def _shape_bytes(shape: str) -> int:
    """Bytes of the arrays in an HLO shape ("f32[2,3]{1,0}", or a tuple of them); 8-bit
    floats (f8e4m3fn, ...) count 1 a value."""
    total = 0
    for element, dims in _ARRAY_SHAPE.findall(shape):
        size = _ELEMENT_BYTES.get(element, 1 if element.startswith("f8") else 0)
        total += size * math.prod(int(d) for d in dims.split(",") if d)
    return total


def _elements(shape: str) -> int:
    """The number of elements of an HLO array shape ("f32[2,3]{1,0}"; 1 for a scalar)."""
    return math.prod(int(d) for d in _ARRAY_SHAPE.search(shape)[2].split(",") if d)


def _computation_bytes(computations: dict[str, list[str]], name: str) -> int:
    # Instruction names are unique across an HLO module.
    shapes = {_DEFINITION.match(line).group(1): _parts(line)[0]
              for lines in computations.values() for line in lines}  # fmt: skip
    total = 0
    for line in _kernel_lines(computations, name):
        opcode, result = _opcode(line), _parts(line)[0]
        if opcode in ("while", "conditional"):
            continue
        operand_bytes = [_shape_bytes(shapes.get(operand, "")) for operand in _operands(line)]
        fused = re.search(r"calls=%([\w.\-]+)", line)
        if opcode == "fusion" and fused and fused[1] in computations:
            result_bytes, operand_bytes = _fusion_bytes(computations[fused[1]], operand_bytes)
        else:
            # A cuDNN or cuBLAS call's last result, u8[N], is its scratch space, not data.
            library = re.search(r'custom_call_target="__(cudnn|cublas)', line)
            if library and result.startswith("(") and ", u8[" in result:
                result = result[: result.rfind(", u8[")]
            result_bytes = _shape_bytes(result)
        total += result_bytes + sum(operand_bytes)
    return total


def _fusion_bytes(fused: list[str], operand_bytes: list[int]) -> tuple[int, list[int]]:
    """(bytes written, bytes read of each operand) of a fusion whose fused computation has
    instruction lines `fused`, given its operands' sizes: an operand it only slices or
    gathers from (through bitcasts and conversions) counts the pieces, and a root that
    updates a slice of a parameter in place (dynamic-update-slice) writes the update and
    reads nothing of the buffer. (A multi-output fusion's in-place updates count whole.)"""
    definitions = {_DEFINITION.match(line).group(1): line for line in fused}
    users: dict[str, list[str]] = collections.defaultdict(list)
    for name, line in definitions.items():
        for operand in _operands(line):
            users[operand].append(name)

    parameters = {}
    for name, line in definitions.items():
        number = re.search(r" parameter\((\d+)\)", line)
        if number:
            parameters[int(number[1])] = name

    def read(name: str) -> int | None:
        """How many of `name`'s elements the fusion reads if it only slices them, else None."""
        pieces = 0
        for user in users[name]:
            opcode = _opcode(definitions[user])
            if opcode in ("bitcast", "convert"):
                piece = read(user)
            elif opcode in _SLICING and _operands(definitions[user])[0] == name:
                piece = _elements(_parts(definitions[user])[0])
            else:
                return None
            if piece is None:
                return None
            pieces += piece
        return pieces

    root = next(line for line in fused if line.lstrip().startswith("ROOT "))
    written, updated, slices_read = _shape_bytes(_parts(root)[0]), None, 0
    if _opcode(root) == "dynamic-update-slice":
        buffer, update = _operands(root)[:2]
        # In place only when the buffer is a parameter (through bitcasts) that the fusion
        # otherwise only slices (a scatter reads the slot it updates): then XLA writes the
        # update into the parameter's memory.
        chain = [_DEFINITION.match(root).group(1)]
        while _opcode(definitions[buffer]) == "bitcast" and users[buffer] == chain[-1:]:
            chain.append(buffer)
            buffer = _operands(definitions[buffer])[0]
        others = [user for user in users[buffer] if user != chain[-1]]
        if buffer in parameters.values() and all(
            _opcode(definitions[user]) in _SLICING for user in others
        ):
            written, updated = _shape_bytes(_parts(definitions[update])[0]), buffer
            slices_read = sum(_shape_bytes(_parts(definitions[user])[0]) for user in others)
    reads = []
    for number, size in enumerate(operand_bytes):
        name = parameters.get(number)
        if name is None:
            reads.append(size)
        elif name == updated:
            reads.append(slices_read)
        else:
            sliced = read(name)
            elements = _elements(_parts(definitions[name])[0])
            reads.append(size if sliced is None else min(size, sliced * size // elements))
    return written, reads


def _called_computation(instruction: str) -> str | None:
    """The computation a `call` instruction runs (its `to_apply`), else None."""
    match = re.search(r"to_apply=%([\w.\-]+)", instruction)
    return match.group(1) if match else None


def _loops(computations: dict[str, list[str]], name: str) -> Iterator[tuple[str, str]]:
    """(instruction line, body name) of each while loop computation `name` runs, looking
    inside the computations it calls (XLA:CPU and GPU command buffers wrap loops in `call`s)
    but not inside the loops."""
    for line in computations[name]:
        opcode = _opcode(line)
        if opcode == "while":
            yield line, re.search(r"body=%([\w.\-]+)", line).group(1)
        elif opcode == "call" and _called_computation(line) in computations:
            yield from _loops(computations, _called_computation(line))


# A line of XLA:GPU's thunk sequence dump (`xla_dump_to`: *.thunk_sequence*.txt): what the
# runtime executes, a thunk a line ("  007: kWhile [prev=006 (1) | ...]"), nested by indent:
# a command buffer's thunks, and a loop's condition and body (under "condition:" and
# "body:" labels, themselves indented differently).
_THUNK = re.compile(r"^( *)\d+: (k\w+)")


def loop_command_buffers(thunk_sequence: str) -> str:
    """How much of a GPU program's step loop (the while loop with the most thunks in its body)
    runs as command buffers (CUDA graphs, which the host launches as one), from its thunk
    sequence: "whole loop" (the loop inside one: the GPU runs it), "loop body" (the body one
    graph, launched by the host each iteration), or the body's graphs and other thunks
    ("2 graphs + 12 thunks": the host launches 14 things an iteration). ValueError when the
    program runs no while loop."""
    lines = thunk_sequence.splitlines()
    thunks = [(i, len(m[1]), m[2]) for i, line in enumerate(lines) if (m := _THUNK.match(line))]
    loops = [_loop_body(lines, thunks, n) for n, thunk in enumerate(thunks) if thunk[2] == "kWhile"]
    if not loops:
        raise ValueError("the thunk sequence runs no while loop")
    n, body = max(loops, key=lambda loop: len(loop[1]))
    _, indent, _ = thunks[n]
    enclosing = [kind for _, depth, kind in thunks[:n] if depth < indent]
    if enclosing and enclosing[-1] == "kCommandBuffer":
        return "whole loop"
    top = min(depth for _, depth, _ in body)
    kinds = [kind for _, depth, kind in body if depth == top]
    graphs = kinds.count("kCommandBuffer")
    if graphs == len(kinds) == 1:
        return "loop body"
    return f"{graphs} graph{'' if graphs == 1 else 's'} + {len(kinds) - graphs} thunks"


def _loop_body(lines: list[str], thunks: list[tuple[int, int, str]],
               n: int) -> tuple[int, list[tuple[int, int, str]]]:  # fmt: skip
    """(n, the thunks of the body of loop thunks[n]): those after its "body:" label, up to the
    next thunk indented no deeper than the loop."""
    line, indent, _ = thunks[n]
    label = next(i for i in range(line, len(lines)) if lines[i].strip() == "body:")
    body = []
    for thunk in thunks[n + 1 :]:
        if thunk[1] <= indent:
            break
        if thunk[0] > label:
            body.append(thunk)
    return n, body
