"""Read an offline W&B run back from its `.wandb` record log, with wandb's own protobuf definitions.

wandb 0.31 writes the log from its Go core and ships no Python reader, so this is the reader:
the file is a LevelDB log (https://github.com/google/leveldb/blob/main/doc/log_format.md) of
32 KiB blocks after a 7-byte header (":W&B", magic 0xBEE1, version 0); each chunk has a 7-byte
header (crc32 of type+data, length, type FULL/FIRST/MIDDLE/LAST) and the joined chunks of one
record are a serialized `wandb.proto.wandb_internal_pb2.Record`. Checksums are verified, so a
misread is an error, not silently wrong data.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B" and magic == 0xBEE1 and version == 0, f"{path} is not a W&B record log"
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # a block's zero trailer
            pos += room
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if length == 0 and kind == 0:  # zero padding to the block end
            pos += room
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, f"bad checksum at byte {pos}"
        pos += HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _item_value(item) -> object:
    return json.loads(item.value_json)


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


@dataclass
class OfflineRun:
    """What a dashboard would show: run settings, config, history rows, summary, metric definitions."""

    run: pb.RunRecord
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    metrics: dict[str, pb.MetricRecord] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    exit_code: int | None = None

    @property
    def history_keys(self) -> set[str]:
        return {k for row in self.history for k in row}


def read_run(run_dir: str | Path) -> OfflineRun:
    """`run_dir` is an `offline-run-*` folder (or the .wandb file itself)."""
    path = Path(run_dir)
    if path.is_dir():
        (path,) = path.glob("*.wandb")
    out: OfflineRun | None = None
    for r in read_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out = out or OfflineRun(run=r.run)
            out.run = r.run
            for item in r.run.config.update:
                out.config[_key(item)] = _item_value(item)
        elif out is None:
            continue
        elif kind == "config":
            for item in r.config.update:
                out.config[_key(item)] = _item_value(item)
        elif kind == "history":
            out.history.append({_key(i): _item_value(i) for i in r.history.item})
        elif kind == "summary":
            for item in r.summary.update:
                out.summary[_key(item)] = _item_value(item)
        elif kind == "metric":
            name = r.metric.name or r.metric.glob_name
            out.metrics[name] = r.metric
        elif kind == "files":
            out.files += [f.path for f in r.files.files]
        elif kind == "exit":
            out.exit_code = r.exit.exit_code
    assert out is not None, f"no run record in {path}"
    return out
