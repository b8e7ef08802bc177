"""Reading work from optimised HLO text: loop trip counts scale what a loop body does."""

from selflengthen_jax.plan import hlo

LOOP = """
HloModule m

%body (p: (f32[8,16], f32[16,16], u32[])) -> (f32[8,16], f32[16,16], u32[]) {
  %p = (f32[8,16]{1,0}, f32[16,16]{1,0}, u32[]) parameter(0)
  %x = f32[8,16]{1,0} get-tuple-element(%p), index=0
  %w = f32[16,16]{1,0} get-tuple-element(%p), index=1
  %i = u32[] get-tuple-element(%p), index=2
  %c = u32[] copy(%i)
  %y = f32[8,16]{1,0} dot(%x, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %step = u32[] constant(STEP)
  %next = u32[] add(%c, %step)
  ROOT %t = (f32[8,16]{1,0}, f32[16,16]{1,0}, u32[]) tuple(%y, %w, %next)
}

%cond (q: (f32[8,16], f32[16,16], u32[])) -> pred[] {
  %q = (f32[8,16]{1,0}, f32[16,16]{1,0}, u32[]) parameter(0)
  %j = u32[] get-tuple-element(%q), index=2
  %bound = u32[] constant(8)
  ROOT %lt = pred[] compare(%j, %bound), direction=LT
}

ENTRY %main (a: f32[8,16], b: f32[16,16]) -> f32[8,16] {
  %a = f32[8,16]{1,0} parameter(0)
  %b = f32[16,16]{1,0} parameter(1)
  %zero = u32[] constant(START)
  %init = (f32[8,16]{1,0}, f32[16,16]{1,0}, u32[]) tuple(%a, %b, %zero)
  %loop = (f32[8,16]{1,0}, f32[16,16]{1,0}, u32[]) while(%init), condition=%cond, body=%body
  ROOT %out = f32[8,16]{1,0} get-tuple-element(%loop), index=0
}
"""
DOT = 2 * 8 * 16 * 16


def _flops(step: int, start: int = 0) -> float:
    return hlo.analyse(LOOP.replace("STEP", str(step)).replace("START", str(start))).dot_flops


def test_a_counted_loop_runs_its_body_bound_times():
    assert _flops(step=1) == 8 * DOT


def test_a_counter_that_steps_by_two_halves_the_trips():
    """The TPU compiler's bidirectional collective-matmul loops run two windows per trip
    and add 2 to their counter: reading the bound alone counted their matmuls twice."""
    assert _flops(step=2) == 4 * DOT


def test_the_counter_start_comes_from_the_initial_tuple():
    assert _flops(step=1, start=3) == 5 * DOT
