"""One TensorBoard run per output directory, written by process 0 only.

`launch.iterate` writes everything under `output_dir/tensorboard` on one global step:
the optimizer steps taken so far across all iterations and roles, so the generator's
and the extender's curves of iteration 1, 2, ... follow each other on one x axis, and
each iteration's generation metrics and length histograms sit at the step where that
iteration's training began. The tags are listed in the README ("TensorBoard").
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from tensorboardX import SummaryWriter

from selflengthen_jax.paths import AnyPath, is_remote
from selflengthen_jax.paths import path as as_path

TB_DIR = "tensorboard"


class Board:
    """A TensorBoard writer on `log_dir`; with `enabled` false (other processes) it
    writes nothing and creates no file.

    A bucket `log_dir` (gs://) has no append, so events go to a local event file that is
    closed, uploaded once as its own object and replaced by the next file (numbered, so
    names sort in writing order) at the first flush `upload_every` seconds after the
    last upload, and at `close`. TensorBoard reads every event file of a run directory
    as one run. Each event is thus uploaded exactly once: a long run costs traffic in
    proportion to what it logs (rewriting one growing file on every flush would cost
    its square), a bucket reader only ever sees complete files, and what is logged
    reaches the bucket at most `upload_every` seconds late."""

    def __init__(self, log_dir: str | AnyPath, enabled: bool = True, upload_every: float = 30.0):
        self.log_dir = as_path(log_dir)
        self.remote = is_remote(log_dir)
        self.upload_every = upload_every
        self.local = self.log_dir
        if self.remote and enabled:
            self.local = Path(tempfile.mkdtemp(prefix="tensorboard-"))
        self.files = 0                  # event files started (bucket: the next one's number)
        self.written = False            # events in the current file since it was started
        self.uploaded_at = -math.inf    # the first flush uploads at once
        self.writer = self._open() if enabled else None

    def _open(self) -> SummaryWriter:
        self.files += 1
        self.written = False
        return SummaryWriter(str(self.local), filename_suffix=f".{self.files:06d}" if self.remote else "")

    def _flush(self) -> None:
        self.written = True
        self.writer.flush()
        if self.remote and time.monotonic() - self.uploaded_at >= self.upload_every:
            self._upload(reopen=True)

    def _upload(self, reopen: bool) -> None:
        """Close the current event file and, if it holds events, upload it (then drop the
        local copy); with `reopen`, start the next file."""
        self.writer.close()
        for file in sorted(self.local.rglob("*")):
            if file.is_file():
                if self.written:
                    target = self.log_dir / file.relative_to(self.local).as_posix()
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(file.read_bytes())
                file.unlink()
        self.uploaded_at = time.monotonic()
        self.writer = self._open() if reopen else None

    def scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        """`prefix/name` = value for each entry, at `step`."""
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(f"{prefix}/{name}", float(value), int(step))
        self._flush()

    def histogram(self, tag: str, values: Sequence[float], step: int) -> None:
        if self.writer is None or not len(values):
            return
        self.writer.add_histogram(tag, np.asarray(values, np.float64), int(step))
        self._flush()

    def close(self) -> None:
        if self.writer is None:
            return
        if self.remote:
            self._upload(reopen=False)
            shutil.rmtree(self.local, ignore_errors=True)
        else:
            self.writer.close()
            self.writer = None


@dataclasses.dataclass
class TrainingCurve:
    """Where one training run's curves go: a board, a tag prefix (e.g.
    `train/iter_2/generator`) and the global step of its step 0. The trainer fills in
    `steps`, the run's total optimizer steps, once it has planned them, so the caller
    can place the next run after it."""

    board: Board
    prefix: str
    offset: int = 0
    steps: int = 0
