"""Turns callgrind profiles of weft-proxy into an lld symbol ordering file (scripts/symbol-order).

Usage: symbol-order.py BINARY FIRST_PROFILE_DIR SECOND_PROFILE_DIR > symbol-order.txt

The functions of BINARY that the first profile ran, by their own cost (hottest first), then
those that only the second ran, the same way. Symbols the binary's own table does not name
(assembly without symbols, recursion markers) are left out.
"""

import collections
import pathlib
import re
import subprocess
import sys

RECURSION_SUFFIX = re.compile(r"'\d+$")


def executed(directory: pathlib.Path, binary: str) -> collections.Counter:
    """Each function of `binary` any profile in `directory` ran, with its exclusive cost."""
    costs: collections.Counter = collections.Counter()
    for path in directory.glob("cg.*"):
        in_binary = False
        function = None
        after_call = False
        with path.open(errors="replace") as lines:
            for line in lines:
                if line.startswith("ob="):
                    in_binary = line[3:].strip() == binary
                elif line.startswith("fn="):
                    function = RECURSION_SUFFIX.sub("", line[3:].strip()) if in_binary else None
                    if function:
                        costs[function] += 0
                elif line.startswith("calls="):
                    # The next cost line is the callee's inclusive cost, not this function's.
                    after_call = True
                elif line[:1].isdigit() or line[:1] in "+-*":
                    if after_call:
                        after_call = False
                        continue
                    fields = line.split()
                    if function and len(fields) >= 2:
                        costs[function] += int(fields[1])
    return costs


def function_symbols(binary: str) -> set[str]:
    listing = subprocess.run(
        ["nm", "--defined-only", binary], check=True, capture_output=True, text=True
    ).stdout
    return {
        fields[2]
        for fields in (line.split() for line in listing.splitlines())
        if len(fields) == 3 and fields[1] in "tTwW"
    }


def main() -> None:
    binary, first, second = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
    binary = str(pathlib.Path(binary).resolve())
    known = function_symbols(binary)
    first_costs = executed(first, binary)
    second_costs = executed(second, binary)
    if not first_costs:
        sys.exit(f"symbol-order: no profile of {binary} in {first}")
    ordered = sorted(first_costs, key=lambda name: -first_costs[name])
    ordered += sorted(
        (name for name in second_costs if name not in first_costs),
        key=lambda name: -second_costs[name],
    )
    ordered = [name for name in ordered if name in known]
    sys.stdout.write("".join(name + "\n" for name in ordered))
    print(f"symbol-order: {len(ordered)} functions ordered", file=sys.stderr)


if __name__ == "__main__":
    main()
