"""Reading TensorBoard event files back (TFRecord framing + the Event protobuf), so tests
check what TensorBoard itself would load: tags, steps, values, histograms."""

from __future__ import annotations

import struct
from pathlib import Path

from tensorboardX.proto import event_pb2


def events(log_dir: Path) -> list[event_pb2.Event]:
    """Every event of every events.out.tfevents.* file under `log_dir`, in file order."""
    out = []
    for path in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            pos += 12  # length + its crc
            out.append(event_pb2.Event.FromString(data[pos:pos + length]))
            pos += length + 4  # payload + its crc
    return out


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] in write order."""
    out: dict[str, list[tuple[int, float]]] = {}
    for event in events(log_dir):
        for value in event.summary.value:
            if value.HasField("simple_value"):
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def histograms(log_dir: Path) -> dict[str, list[tuple[int, float, float]]]:
    """tag -> [(step, number of values, sum)] in write order."""
    out: dict[str, list[tuple[int, float, float]]] = {}
    for event in events(log_dir):
        for value in event.summary.value:
            if value.HasField("histo"):
                out.setdefault(value.tag, []).append((event.step, value.histo.num, value.histo.sum))
    return out
