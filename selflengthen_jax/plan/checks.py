"""The two checks a user runs before booking hardware, both loading no weights:
`--dry-run` (every start-up check, then the planner's memory estimate: instant) and
`--rehearse SLICE` (every executable compiled for a TPU slice by the TPU compiler).

They sit above the pipeline because they check a whole run with the pipeline's own
start-up checks (`pipeline.start`), and above the engine and trainer whose functions
the rehearsal compiles.
"""

from __future__ import annotations

import dataclasses
import jax

from selflengthen_jax.checkpoint.hf_import import weight_files
from selflengthen_jax.config import Config, check_context, validate_for_model
from selflengthen_jax.pipeline.start import check_loop_settings, check_output, model_config
from selflengthen_jax.plan import rehearsal, slices
from selflengthen_jax.plan.planner import format_plan, plan
from selflengthen_jax.paths import path as as_path
from selflengthen_jax.sampling.service import check_model


def dry_run(cfg: Config, force: bool = False) -> str:
    """Validate everything and plan memory for the configured device, loading no weights
    (a model.path that is here is checked like the real start checks it)."""
    mcfg = model_config(cfg)
    validate_for_model(cfg, mcfg.num_heads)
    if cfg.model.path and (as_path(cfg.model.path) / "config.json").is_file():
        check_model(cfg.model.path)
        weight_files(cfg.model.path)
    check_context(cfg, mcfg.max_position_embeddings)
    check_loop_settings(cfg)
    check_output(cfg, force)
    n = cfg.plan.num_devices or jax.device_count()
    return format_plan(plan(cfg, mcfg, cfg.plan.device, n))


@dataclasses.dataclass
class Rehearsal:
    text: str                  # the table and the FLOP cross-check
    last_line: str
    rows: list[rehearsal.Row]

    @property
    def fits(self) -> bool:
        return all(r.fits for r in self.rows)


def rehearse(cfg: Config, slice_name: str, log=print, only: tuple[str, ...] = ()) -> Rehearsal:
    """Compile every executable of the loop for a TPU slice (no weights, no TPU).

    Bad input (slice name, model preset, loop settings, an axis the slice does not
    divide) is refused before anything compiles; a missing libtpu raises LibtpuMissing.
    """
    target = slices.parse_slice(slice_name)
    mcfg = model_config(cfg)
    validate_for_model(cfg, mcfg.num_heads)
    if cfg.train.mode == "lora":  # train.mode=full rehearses launch.train's full fine-tuning
        check_loop_settings(cfg)
    devices = slices.topology_devices(target)
    rows = rehearsal.rehearse(cfg, mcfg, target, devices, log, only)
    bad = [r for r in rows if not r.fits]
    hint = None
    if bad:
        hint = rehearsal.suggest(cfg, mcfg, max(bad, key=lambda r: r.peak_bytes), target, devices)
    return Rehearsal(rehearsal.format_rows(target, devices, rows),
                     rehearsal.last_line(target, rows, hint), rows)
