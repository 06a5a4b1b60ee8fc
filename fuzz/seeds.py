#!/usr/bin/env python3
"""Writes the seed corpus under fuzz/corpus/<target>/ (run from anywhere;
rerun after changing a seed). The protobuf messages are encoded by hand (the
wire format of the few scalar and string fields these requests have) so that
no protobuf package is needed. Each seed is one valid input or one edge case
of DESIGN.md §2, §3, §8; libFuzzer mutates from them."""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def varint(n):
    n &= (1 << 64) - 1  # negative int64: two's complement, ten bytes
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def int_field(number, value):
    return varint(number << 3) + varint(value)


def bytes_field(number, value):
    if isinstance(value, str):
        value = value.encode("utf-8")
    return varint(number << 3 | 2) + varint(len(value)) + value


def send(total=100, count=3, kind=1, greeting="", recipients=(), key="k1"):
    out = int_field(1, total) + int_field(2, count) + int_field(3, kind)
    if greeting:
        out += bytes_field(4, greeting)
    for r in recipients:
        out += bytes_field(5, r)
    return out + bytes_field(6, key)


def timestamp(seconds, nanos=0):
    return int_field(1, seconds) + int_field(2, nanos)


def write(target, name, data):
    directory = os.path.join(HERE, "corpus", target)
    os.makedirs(directory, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


ID = "2601221000000481516742"

# envelope_id: valid IDs and one of each refusal.
for name, text in [
    ("valid", ID),
    ("valid-epoch3", "2602291030000000001999"),
    ("leap-day-2100-style", "0002291000000000000000"),
    ("bad-date", "2613321000000481516742"),
    ("region-zero", "2601220000000481516742"),
    ("short", "260122100000048151674"),
    ("long", ID + "0"),
    ("letter", "26012210000004815167x2"),
    ("unicode-digit", "26012210000004815167\u0662\u0662"),
    ("empty", ""),
]:
    write("envelope_id", name, text)

# cells_yaml: the repo's file, a minimal one, and one of each kind of refusal.
with open(os.path.join(HERE, "..", "cells.yaml"), "rb") as f:
    write("cells_yaml", "repo", f.read())
MINIMAL = """version: 1
regions: [north]
cells:
  - name: n1
    region: north
    status: active
    servers: ["127.0.0.1:7101"]
    db: "postgres://redcell@127.0.0.1:5432/n1"
epochs:
  - id: 0
    ranges:
      north: { n1: "000-999" }
minting:
  epoch: 0
"""
write("cells_yaml", "minimal", MINIMAL)
write("cells_yaml", "gap", MINIMAL.replace('"000-999"', '"000-998"'))
write("cells_yaml", "overlap", MINIMAL.replace('"000-999"', '"000-999,500"'))
write("cells_yaml", "unknown-key", MINIMAL.replace("minting:", "mintin:"))
write("cells_yaml", "bad-epoch", MINIMAL.replace("  epoch: 0", "  epoch: 7"))
write("cells_yaml", "degrade", MINIMAL + "degrade: { history: { pages: 3 }, claims: off }\n")
write("cells_yaml", "aliases", "a: &a [1, 2]\nb: [*a, *a, *a]\n")
write("cells_yaml", "not-yaml", "{[}\n")

# send_request: `caller \n SendRequest`.
for name, caller, body in [
    ("lucky", "alice", send()),
    ("equal", "alice", send(total=99, count=3, kind=2)),
    ("exclusive", "alice", send(total=100, count=1, kind=3, recipients=["bob"])),
    ("exclusive-self", "alice", send(total=100, count=1, kind=3, recipients=["alice"])),
    ("max", "alice", send(total=2_000_000, count=500, greeting="x" * 64, key="k" * 64)),
    ("over-max", "alice", send(total=2_000_001, count=501, greeting="x" * 65, key="k" * 65)),
    ("negative", "alice", send(total=-(1 << 63), count=0, kind=-1)),
    ("nul-greeting", "alice", send(greeting="a\0b")),
    ("unicode-greeting", "alice", send(greeting="\u606d\u559c\u53d1\u8d22" * 16)),
    ("injection", "alice", send(key="x'; DROP TABLE envelopes;--", recipients=["bob\r\nx"])),
    ("bad-caller", "al ice", send()),
    ("no-caller", "", send()),
]:
    write("send_request", name, caller.encode() + b"\n" + body)

# envelope_request: selector byte (0 Grab, 1 Open, 2 Get), `caller \n message`.
for name, which, body in [
    ("grab", 0, bytes_field(1, ID)),
    ("open", 1, bytes_field(1, ID)),
    ("get", 2, bytes_field(1, ID) + bytes_field(2, "12") + int_field(3, 7)),
    ("get-big-page", 2, bytes_field(1, ID) + int_field(3, 501)),
    ("get-bad-token", 2, bytes_field(1, ID) + bytes_field(2, "-1")),
    ("open-short-id", 1, bytes_field(1, "42")),
    ("grab-unknown-epoch", 0, bytes_field(1, "2601221990000481516742")),
    ("grab-unknown-region", 0, bytes_field(1, "2601229000000481516742")),
]:
    write("envelope_request", name, bytes([which]) + b"alice\n" + body)

# history_request: selector byte (0 client History, 1 CellHistory).
CURSOR = "1769040000.5." + ID + ".2"
for name, which, body in [
    ("history-first", 0, int_field(1, 1) + int_field(3, 20)),
    ("history-cursor", 0, int_field(1, 2) + bytes_field(2, CURSOR)),
    ("history-last-second", 0, int_field(1, 1) + bytes_field(2, "253402300799.999999999." + ID + ".0")),
    ("history-forged", 0, int_field(1, 1) + bytes_field(2, "eyJ4Ijox.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")),
    ("cell-first", 1, bytes_field(1, "alice") + int_field(2, 1) + int_field(5, 21)),
    ("cell-cursor", 1, bytes_field(1, "alice") + int_field(2, 2) + bytes_field(3, timestamp(1769040000, 5)) + bytes_field(4, ID)),
    ("cell-far-future", 1, bytes_field(1, "alice") + int_field(2, 1) + bytes_field(3, timestamp((1 << 63) - 1))),
    ("cell-negative-nanos", 1, bytes_field(1, "alice") + int_field(2, 1) + bytes_field(3, timestamp(0, -1))),
    ("cell-nul-id", 1, bytes_field(1, "alice") + int_field(2, 1) + bytes_field(4, "12\0" + "4")),
]:
    write("history_request", name, bytes([which]) + b"alice\n" + body)
