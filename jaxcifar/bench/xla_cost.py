"""What XLA says about a compiled step: its FLOPs, the device memory one call takes, how
many kernels one call launches, and (from XLA:GPU's thunk sequence) which of them run as CUDA
graphs. (Compiling it, timed: `cpu_fusions.compile_timed`.)"""

from __future__ import annotations

import collections
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


def _opcode(instruction: str) -> str:
    """The opcode of one instruction line: the word before "(" after its (maybe tuple) shape."""
    rest = _INSTRUCTION.match(instruction).group(1)
    if rest.startswith("("):  # a tuple shape holds spaces: skip to its closing parenthesis
        depth = 0
        for i, char in enumerate(rest):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                rest = rest[i + 1 :]
                break
    else:
        rest = rest.split(" ", 1)[1]
    return rest.strip().split("(", 1)[0]


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
    for line in computations[name]:
        opcode, called = _opcode(line), _called_computation(line)
        if opcode == "call" and called in computations:
            counts += _count_opcodes(computations, called, by_kind)
        elif opcode not in _BOOKKEEPING:
            kind = re.search(r'(?:kind=|custom_call_target=")([\w$.\-]+)', line)
            counts[f"{opcode} {kind[1]}" if by_kind and kind else opcode] += 1
    return counts


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
