"""One TensorBoard run per output directory, written by process 0 only.

`launch.iterate` writes everything under `output_dir/tensorboard` on one global step:
the optimizer steps taken so far across all iterations and roles, so the generator's
and the extender's curves of iteration 1, 2, ... follow each other on one x axis, and
each iteration's generation metrics and length histograms sit at the step where that
iteration's training began. The tags are listed in the README ("TensorBoard").
"""

from __future__ import annotations

import dataclasses
import tempfile
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

    A bucket `log_dir` (gs://) has no append: the events are written to a local folder
    and each flush uploads every event file whole, as one object, so a reader of the
    bucket always sees complete records."""

    def __init__(self, log_dir: str | AnyPath, enabled: bool = True):
        self.log_dir = as_path(log_dir)
        self.local = Path(tempfile.mkdtemp(prefix="tensorboard-")) if is_remote(log_dir) else self.log_dir
        self.writer = SummaryWriter(str(self.local)) if enabled else None

    def _flush(self) -> None:
        self.writer.flush()
        if self.local != self.log_dir:
            for file in self.local.rglob("*"):
                if file.is_file():
                    target = self.log_dir / file.relative_to(self.local).as_posix()
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(file.read_bytes())

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
        if self.writer is not None:
            self._flush()
            self.writer.close()


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
