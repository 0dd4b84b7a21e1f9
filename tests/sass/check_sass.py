#!/usr/bin/env python3
"""Machine-code checks of the hot CUDA kernels (sm_90 SASS), no GPU needed.

Reads the SASS and resource usage that cuobjdump prints for the built CUDA objects and checks,
per hot kernel, the properties that keep it at the memory floor:

  resources        registers within the kernel's budget; no stack, no local memory, no spills
                   (LDL/STL);
  wide_stores      every global store is one 128-bit instruction (STG .128), and so is every
                   global reduction (RED/REDG/ATOMG: an atomic add of 4 floats, F32x4);
  wide_loads       no 8/16-bit global load anywhere; in the steady-state loop every global load
                   is 128-bit, or a 32/64-bit read-only (.CONSTANT) index or table load;
  no_calls         no CALL, BRX, JMX or RET in the steady-state loop (a runtime switch becomes
                   an indirect branch; a call saves registers and serialises);
  loads_before_use the 128-bit loads of the steady-state loop are issued in groups of at least
                   3 (48 bytes a thread: 24 KiB per SM at 512 threads) before any of the group's
                   values is read, and no load's address comes from a load in flight (loads
                   in flight together, not one at a time).

The steady-state loops of a kernel are the innermost loops (backward branches) that hold a
128-bit global load. `--defects DIR` compiles each DIR/*.cu (a `good_` and a `bad_` kernel per
rule) and checks that the rule passes on the good kernel and fails on the bad one, so that no
check passes vacuously.

Usage:
  check_sass.py --objects OBJ_OR_DIR... [--arch sm_90]
  check_sass.py --defects DIR --nvcc NVCC [--arch sm_90]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable


@dataclasses.dataclass
class Instruction:
    address: int
    predicate: str  # "" or e.g. "@!P0"
    opcode: str  # with modifiers, e.g. "LDG.E.EF.128"
    operands: list[str]

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]

    @property
    def modifiers(self) -> list[str]:
        return self.opcode.split(".")[1:]


@dataclasses.dataclass
class Function:
    name: str
    instructions: list[Instruction]
    resources: dict[str, int]


@dataclasses.dataclass
class KernelSpec:
    """The kernels a name pattern selects, their register budget, and which of them load rows."""

    pattern: str
    registers: int
    why: str
    loads_rows: Callable[[str], bool] = lambda name: True


# The hot kernels: a budget of 128 registers keeps 2 blocks of 256 threads per SM
# (__launch_bounds__(256, 2)), 64 bytes of row loads in flight per thread: 32 KiB per SM.
HOT_KERNELS = [
    # Combine::kPositionOnly (mangled "CombineE3") writes codes and loads no rows.
    KernelSpec("add_positional_dense_kernel", 128, "dense add_positional / embedding",
               lambda name: "CombineE3E" not in name),
    KernelSpec("rotary_dense_kernel", 128, "dense rotary"),
    KernelSpec("rotary_tables_dense_kernel", 128, "dense rotary with given cos/sin tables"),
    KernelSpec("scatter_dense_atomic_kernel", 128, "dense weight/table gradient, atomic"),
    KernelSpec("scatter_dense_chunks_kernel", 128, "dense weight/table gradient, deterministic"),
]

# The rules that look at the steady-state loop (of a kernel that loads rows).
LOOP_RULES = ("wide_loads", "no_calls", "loads_before_use")

RULES: dict[str, Callable[[Function, int], list[str]]] = {}


def rule(name: str):
    def register(check):
        RULES[name] = check
        return check

    return register


# ---- reading cuobjdump ---------------------------------------------------------------------------

_INSTRUCTION = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")


def find_cuobjdump() -> str:
    """cuobjdump from $POSENC_CUOBJDUMP, PATH, the CUDA toolkit, or triton's wheel."""
    candidates = [os.environ.get("POSENC_CUOBJDUMP", ""), shutil.which("cuobjdump") or ""]
    for root in (os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"):
        if root:
            candidates.append(os.path.join(root, "bin", "cuobjdump"))
    try:
        import triton  # torch's CUDA wheels depend on it; it ships cuobjdump

        candidates.append(
            os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        )
    except ImportError:
        pass
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    sys.exit("check_sass: no cuobjdump (set POSENC_CUOBJDUMP, or pip install triton)")


def parse_sass(text: str) -> dict[str, list[Instruction]]:
    functions: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("Function :"):
            current = functions.setdefault(stripped.split(":", 1)[1].strip(), [])
            continue
        match = _INSTRUCTION.match(line)
        if match is None or current is None:
            continue
        body = match.group(2).strip()
        predicate = ""
        if body.startswith("@"):
            predicate, body = body.split(None, 1)
        opcode, _, rest = body.partition(" ")
        operands = [operand.strip() for operand in rest.split(",")] if rest.strip() else []
        current.append(Instruction(int(match.group(1), 16), predicate, opcode, operands))
    return functions


def parse_resources(text: str) -> dict[str, dict[str, int]]:
    resources: dict[str, dict[str, int]] = {}
    name = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("Function ") and stripped.endswith(":"):
            name = stripped[len("Function ") : -1].strip()
        elif name is not None and stripped.startswith("REG:"):
            resources[name] = {
                key: int(value)
                for key, value in re.findall(r"([A-Z]+(?:\[\d+\])?):(\d+)", stripped)
            }
            name = None
    return resources


def load_functions(paths: list[Path], arch: str) -> list[Function]:
    cuobjdump = find_cuobjdump()
    functions = []
    for path in paths:
        sass = subprocess.run(
            [cuobjdump, "-arch", arch, "-sass", str(path)], check=True, capture_output=True,
            text=True,
        ).stdout
        usage = subprocess.run(
            [cuobjdump, "-arch", arch, "-res-usage", str(path)], check=True, capture_output=True,
            text=True,
        ).stdout
        resources = parse_resources(usage)
        for name, instructions in parse_sass(sass).items():
            functions.append(Function(name, instructions, resources.get(name, {})))
    return functions


# ---- registers an instruction reads and writes ----------------------------------------------------

_REGISTER = re.compile(r"(?<![A-Z_])R(\d+)(\.64)?")
_NO_DESTINATION = {"STG", "ST", "STS", "STL", "RED", "BRA", "BRX", "CALL", "RET", "EXIT", "BSYNC",
                   "BSSY", "BAR", "WARPSYNC", "NOP", "JMX"}


def width_registers(instruction: Instruction) -> int:
    for modifier in instruction.modifiers:
        if modifier == "128":
            return 4
        if modifier == "64":
            return 2
    return 1


def registers_of(operand: str, count: int = 1) -> set[int]:
    found: set[int] = set()
    for number, wide in _REGISTER.findall(operand):
        first = int(number)
        width = max(count, 2 if wide else 1)
        found.update(range(first, first + width))
    return found


def destinations(instruction: Instruction) -> set[int]:
    if instruction.base in _NO_DESTINATION or not instruction.operands:
        return set()
    first = instruction.operands[0]
    if not first.startswith("R"):
        return set()
    count = width_registers(instruction) if instruction.base in ("LDG", "LD", "LDS", "LDC") else 1
    if instruction.base.startswith("D") and instruction.base not in ("DSETP",):
        count = 2  # double-precision results take a register pair
    return registers_of(first, count)


def sources(instruction: Instruction) -> set[int]:
    operands = instruction.operands
    if instruction.base in ("STG", "ST", "STS", "STL", "RED"):
        # [address], value: a 128-bit store reads 4 value registers.
        found = registers_of(operands[0]) if operands else set()
        for operand in operands[1:]:
            found |= registers_of(operand, width_registers(instruction))
        return found
    if destinations(instruction):
        operands = operands[1:]
    found: set[int] = set()
    for operand in operands:
        found |= registers_of(operand)
    return found


def is_wide_global_load(instruction: Instruction) -> bool:
    return instruction.base == "LDG" and "128" in instruction.modifiers


# ---- loops ---------------------------------------------------------------------------------------


def loops(function: Function) -> list[tuple[int, int]]:
    """(first, last) instruction indices of each backward branch's loop."""
    index_of = {instruction.address: i for i, instruction in enumerate(function.instructions)}
    found = []
    for i, instruction in enumerate(function.instructions):
        if instruction.base != "BRA" or not instruction.operands:
            continue
        target = instruction.operands[-1]
        if not target.startswith("0x"):
            continue
        address = int(target, 16)
        if address <= instruction.address and address in index_of:
            found.append((index_of[address], i))
    return found


def steady_state_loops(function: Function) -> list[tuple[int, int]]:
    """The innermost loops that hold a 128-bit global load."""
    holding = [
        (first, last)
        for first, last in loops(function)
        if any(is_wide_global_load(x) for x in function.instructions[first : last + 1])
    ]
    return [
        (first, last)
        for first, last in holding
        if not any(
            (f, l) != (first, last) and first <= f and l <= last for f, l in holding
        )
    ]


def loop_text(function: Function, loop: tuple[int, int]) -> str:
    first, last = loop
    return (
        f"loop {function.instructions[first].address:#x}-"
        f"{function.instructions[last].address:#x}"
    )


NO_STEADY_LOOP = "no steady-state loop (an innermost loop with a 128-bit global load)"


def check_steady_loops(
    function: Function, check_loop: Callable[[list[Instruction]], str | None]
) -> list[str]:
    """check_loop(body) on each steady-state loop: its failure, or None; a kernel without such
    a loop fails (no rule passes vacuously)."""
    steady = steady_state_loops(function)
    if not steady:
        return [NO_STEADY_LOOP]
    failures = []
    for first, last in steady:
        failure = check_loop(function.instructions[first : last + 1])
        if failure is not None:
            failures.append(f"{loop_text(function, (first, last))}: {failure}")
    return failures


# ---- the rules -----------------------------------------------------------------------------------


@rule("resources")
def check_resources(function: Function, register_budget: int) -> list[str]:
    failures = []
    resources = function.resources
    if not resources:
        return ["no resource usage reported"]
    if resources.get("REG", 0) > register_budget:
        failures.append(f"{resources['REG']} registers, budget {register_budget}")
    for key in ("STACK", "LOCAL"):
        if resources.get(key, 0) != 0:
            failures.append(f"{key} {resources[key]} bytes, expected 0")
    spills = [x for x in function.instructions if x.base in ("LDL", "STL")]
    if spills:
        failures.append(f"{len(spills)} local-memory (spill) instructions, first {spills[0].opcode}")
    return failures


_REDUCTIONS = {"RED", "REDG", "ATOMG", "ATOM"}


@rule("wide_stores")
def check_wide_stores(function: Function, register_budget: int) -> list[str]:
    failures = []
    narrow = [x for x in function.instructions if x.base == "STG" and "128" not in x.modifiers]
    if narrow:
        failures.append(f"{len(narrow)} global stores narrower than 128 bits, e.g. "
                        f"{narrow[0].opcode} at {narrow[0].address:#x}")
    narrow = [x for x in function.instructions
              if x.base in _REDUCTIONS and "F32x4" not in x.modifiers]
    if narrow:
        failures.append(f"{len(narrow)} global reductions narrower than 128 bits, e.g. "
                        f"{narrow[0].opcode} at {narrow[0].address:#x}")
    return failures


_NARROW = {"U8", "S8", "U16", "S16"}


@rule("wide_loads")
def check_wide_loads(function: Function, register_budget: int) -> list[str]:
    failures = []
    narrow = [x for x in function.instructions
              if x.base == "LDG" and _NARROW.intersection(x.modifiers)]
    if narrow:
        failures.append(f"{len(narrow)} 8/16-bit global loads, e.g. {narrow[0].opcode} at "
                        f"{narrow[0].address:#x}")

    def loop_loads(body: list[Instruction]) -> str | None:
        for x in body:
            if x.base == "LDG" and "128" not in x.modifiers and "CONSTANT" not in x.modifiers:
                return (f"{x.opcode} at {x.address:#x} is neither 128-bit nor a read-only "
                        "index/table load")
        return None

    return failures + check_steady_loops(function, loop_loads)


@rule("no_calls")
def check_no_calls(function: Function, register_budget: int) -> list[str]:
    def calls(body: list[Instruction]) -> str | None:
        for x in body:
            if x.base in ("CALL", "BRX", "JMX", "RET"):
                return f"{x.opcode} at {x.address:#x}"
        return None

    return check_steady_loops(function, calls)


# 128-bit loads a thread issues together before it reads any of them.
MIN_LOADS_IN_FLIGHT = 3


@rule("loads_before_use")
def check_loads_before_use(function: Function, register_budget: int) -> list[str]:
    def loads_in_flight(body: list[Instruction]) -> str | None:
        # Registers holding a loaded value not yet read (until redefined) -> the load's index.
        pending: dict[int, int] = {}
        group: list[int] = []  # the loads issued since the last read of a loaded value
        for i, x in enumerate(body):
            if is_wide_global_load(x):
                address = registers_of(x.operands[1]) if len(x.operands) > 1 else set()
                used = address & pending.keys()
                if used:
                    return (f"the load at {x.address:#x} takes its address from the load at "
                            f"{body[pending[min(used)]].address:#x}")
                for register in destinations(x):
                    pending[register] = i
                group.append(i)
                continue
            used = sources(x) & pending.keys()
            if used and group and pending[min(used)] in group:
                if len(group) < MIN_LOADS_IN_FLIGHT:
                    return (f"{x.opcode} at {x.address:#x} reads the load at "
                            f"{body[pending[min(used)]].address:#x} with {len(group)} 128-bit "
                            f"load(s) in flight, fewer than {MIN_LOADS_IN_FLIGHT}")
                group = []
            for register in destinations(x):
                pending.pop(register, None)
        # Loads at the bottom of the loop, read after the back edge.
        if 0 < len(group) < MIN_LOADS_IN_FLIGHT:
            return (f"{len(group)} 128-bit load(s) in flight at the back edge, fewer than "
                    f"{MIN_LOADS_IN_FLIGHT}")
        return None

    return check_steady_loops(function, loads_in_flight)


def check_function(function: Function, register_budget: int, rules: list[str]) -> list[str]:
    return [f"{name}: {failure}" for name in rules for failure in RULES[name](function,
                                                                               register_budget)]


# ---- entry points --------------------------------------------------------------------------------


def check_objects(paths: list[Path], arch: str) -> int:
    objects = []
    for path in paths:
        objects.extend(sorted(path.rglob("*.o")) if path.is_dir() else [path])
    functions = load_functions(objects, arch)
    failed = 0
    for spec in HOT_KERNELS:
        selected = [f for f in functions if spec.pattern in f.name]
        if not selected:
            print(f"FAIL {spec.pattern}: no such kernel in {[str(o) for o in objects]}")
            failed += 1
            continue
        for function in selected:
            rules = [name for name in RULES
                     if spec.loads_rows(function.name) or name not in LOOP_RULES]
            failures = check_function(function, spec.registers, rules)
            registers = function.resources.get("REG", "?")
            status = "FAIL" if failures else "ok  "
            print(f"{status} {spec.why}: {demangled_tail(function.name)} ({registers} registers)")
            for failure in failures:
                print(f"       {failure}")
            failed += bool(failures)
        print(f"     {spec.why}: {len(selected)} kernels checked against {len(RULES)} rules")
    return 1 if failed else 0


def demangled_tail(name: str) -> str:
    """The template arguments of a mangled kernel name, shortened for a report line."""
    match = re.search(r"kernelI(.*)EEvN", name)
    return match.group(1) if match else name[-60:]


def check_defects(directory: Path, nvcc: str, arch: str) -> int:
    failed = 0
    with tempfile.TemporaryDirectory() as scratch:
        for source in sorted(directory.glob("*.cu")):
            rule_name = re.search(r"^// rule: (\w+)", source.read_text(), re.M)
            if rule_name is None or rule_name.group(1) not in RULES:
                print(f"FAIL {source.name}: no '// rule: NAME' line naming one of {list(RULES)}")
                failed += 1
                continue
            name = rule_name.group(1)
            cubin = Path(scratch) / (source.stem + ".cubin")
            subprocess.run(
                [nvcc, f"-arch={arch}", "-cubin", "-O3", "-std=c++17", "-o", str(cubin),
                 str(source)], check=True,
            )
            functions = load_functions([cubin], arch)
            for kind in ("good", "bad"):
                selected = [f for f in functions if f"{kind}_" in f.name]
                if not selected:
                    print(f"FAIL {source.name}: no {kind}_ kernel")
                    failed += 1
                    continue
                for function in selected:
                    failures = RULES[name](function, 128)
                    expected = kind == "bad"
                    ok = bool(failures) == expected
                    verdict = "fails" if failures else "passes"
                    print(f"{'ok  ' if ok else 'FAIL'} {name} {verdict} on {source.name}:"
                          f"{kind} ({'; '.join(failures) or 'clean'})")
                    failed += not ok
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", nargs="+", type=Path, help="CUDA objects or directories")
    parser.add_argument("--defects", type=Path, help="directory of defect kernels")
    parser.add_argument("--nvcc", default="nvcc")
    parser.add_argument("--arch", default="sm_90")
    args = parser.parse_args()
    if args.defects is not None:
        return check_defects(args.defects, args.nvcc, args.arch)
    if args.objects:
        return check_objects(args.objects, args.arch)
    parser.error("give --objects or --defects")
    return 2


if __name__ == "__main__":
    sys.exit(main())
