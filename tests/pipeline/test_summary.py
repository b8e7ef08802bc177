"""The iteration summary counts prompts skipped as too long, phase by phase."""

from selflengthen_jax.pipeline.store import mark_done
from selflengthen_jax.pipeline.summary import iteration_summary, summary_table


def test_prompt_too_long_counts_are_summed_over_phases_and_shown(tmp_path):
    for name in ("initial", "extended"):
        (tmp_path / f"{name}.jsonl").write_text('{"id": "a", "words": 10}\n')
    mark_done(tmp_path, "instructions", {"records": 3, "counts": {"attempts": 6}})
    mark_done(tmp_path, "initial", {"records": 4, "counts": {"prompt_too_long": 1}})
    mark_done(tmp_path, "extended", {"records": 2, "counts": {"prompt_too_long": 5}})
    entry = iteration_summary(1, tmp_path)
    assert entry["prompt_too_long"] == 6
    assert entry["phases"]["extended"]["counts"]["prompt_too_long"] == 5
    head, _, row = summary_table([entry]).splitlines()
    assert head.split("|")[9].strip() == "prompts too long" and row.split("|")[9].strip() == "6"
