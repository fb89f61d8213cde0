"""The top functions of a Go CPU profile (pprof's gzipped profile.proto), without Go's tools.

    .venv/bin/python bench/pprof_top.py PROFILE [--top 40]

For the registry's own profile: run it with REGISTRY_HTTP_DEBUG_ADDR=127.0.0.1:PORT (its
debug server serves net/http/pprof) and fetch /debug/pprof/profile?seconds=N during a load,
as docs/benchmarks.md did for manifest GETs. Prints the total, then per function the flat
share (samples whose innermost frame it is) and the cumulative share (samples it is anywhere
in), both in percent of the last sample value (CPU nanoseconds).
"""

from __future__ import annotations

import argparse
import collections
import gzip
from collections.abc import Iterator, Sequence
from pathlib import Path


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: ints for varints, bytes otherwise."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            size, i = _varint(data, i)
            value, i = data[i : i + size], i + size
        elif wire == 1:
            value, i = data[i : i + 8], i + 8
        elif wire == 5:
            value, i = data[i : i + 4], i + 4
        else:
            raise ValueError(f"protobuf wire type {wire} is not in profile.proto")
        yield number, value


def _ints(value: int | bytes) -> list[int]:
    """A repeated integer field, packed or not."""
    if isinstance(value, int):
        return [value]
    out, i = [], 0
    while i < len(value):
        n, i = _varint(value, i)
        out.append(n)
    return out


def top(profile: bytes) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """(total, flat, cumulative) of a gzipped profile: sample values by function name."""
    samples: list[tuple[list[int], list[int]]] = []
    locations: dict[int, list[int]] = {}
    functions: dict[int, int] = {}
    strings: list[str] = []
    for number, value in _fields(gzip.decompress(profile)):
        if number == 2 and isinstance(value, bytes):  # Sample
            ids: list[int] = []
            values: list[int] = []
            for n, v in _fields(value):
                (ids if n == 1 else values if n == 2 else []).extend(_ints(v))
            samples.append((ids, values))
        elif number == 4 and isinstance(value, bytes):  # Location: id, lines (function ids)
            location, funcs = 0, []
            for n, v in _fields(value):
                if n == 1 and isinstance(v, int):
                    location = v
                elif n == 4 and isinstance(v, bytes):
                    funcs += [f for m, f in _fields(v) if m == 1 and isinstance(f, int)]
            locations[location] = funcs
        elif number == 5 and isinstance(value, bytes):  # Function: id, name (string index)
            fields = {n: v for n, v in _fields(value) if isinstance(v, int)}
            functions[fields.get(1, 0)] = fields.get(2, 0)
        elif number == 6 and isinstance(value, bytes):  # string table
            strings.append(value.decode())
    flat: collections.Counter[str] = collections.Counter()
    cumulative: collections.Counter[str] = collections.Counter()
    total = 0
    for ids, values in samples:
        weight = values[-1]
        total += weight
        names = [strings[functions[f]] for location in ids for f in locations.get(location, [])]
        if names:
            flat[names[0]] += weight
        for name in set(names):
            cumulative[name] += weight
    return total, flat, cumulative


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args(argv)
    total, flat, cumulative = top(args.profile.read_bytes())
    print(f"total {total / 1e9:.2f} s")
    for label, counts in (("flat", flat), ("cumulative", cumulative)):
        print(f"{label}:")
        for name, value in counts.most_common(args.top):
            print(f"  {100 * value / total:5.1f} %  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
