"""Hypothesis writes the fault schedule, so a failing schedule shrinks to a small one."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .sim import Faults, Simulation

ACTIONS = ("crash", "restart", "isolate", "split", "one_way", "pause", "heal_links", "transfer",
           "reconfigure")
schedules = st.lists(st.tuples(st.floats(0, 2000), st.sampled_from(ACTIONS), st.integers(0, 5)),
                     max_size=25)


@settings(max_examples=40, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(schedule=schedules, drop=st.sampled_from((0.0, 0.05, 0.2)), dup=st.sampled_from((0.0, 0.1)),
       seed=st.integers(0, 3))
def test_generated_fault_schedules(schedule: list[tuple[float, str, int]], drop: float,
                                   dup: float, seed: int) -> None:
    faults = Faults(drop=drop, dup=dup, slow=0.1, crash_mid_ready=0.01, reconfig=True)
    Simulation(seed, faults=faults, schedule=schedule, fault_ms=2000.0).run()
