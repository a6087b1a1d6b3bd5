import itertools
import random

import pytest

from loadtests.guards import MAX_USERS, LoadTestBoundsError
from loadtests.profiles import PROFILES, UnknownProfile, get_profile
from loadtests.shapes import PoissonSessions, Spike, Steady, Step, Tick, poisson_arrivals, users_over_time


def test_steady_holds_its_users_until_the_end_then_stops():
    shape = Steady(users=5, duration_s=30, spawn_rate=2)
    assert shape.at(0) == Tick(5, 2)
    assert shape.at(29.9) == Tick(5, 2)
    assert shape.at(30) is None
    assert shape.at(1000) is None


def test_step_adds_users_each_step_and_holds_at_the_maximum():
    shape = Step(start_users=2, step_users=3, step_s=10, max_users=9, duration_s=60)
    users = {t: shape.at(t).users for t in (0, 9.9, 10, 20, 30, 59)}
    assert users == {0: 2, 9.9: 2, 10: 5, 20: 8, 30: 9, 59: 9}
    assert shape.at(60) is None


def test_spike_jumps_to_the_peak_for_its_window_and_comes_back():
    shape = Spike(base_users=2, peak_users=10, spike_at_s=20, spike_s=5, duration_s=40)
    assert shape.at(19.9).users == 2
    assert shape.at(20) == Tick(10, shape.spike_spawn_rate)
    assert shape.at(24.9).users == 10
    assert shape.at(25).users == 2
    assert shape.at(40) is None


def test_poisson_arrivals_are_seeded_and_reproducible():
    a = poisson_arrivals(2.0, 100, seed=7)
    assert a == poisson_arrivals(2.0, 100, seed=7)
    assert a != poisson_arrivals(2.0, 100, seed=8)
    assert list(a) == sorted(a) and all(0 <= t < 100 for t in a)


def test_poisson_arrival_count_matches_the_rate():
    # 5 * 2000 = 10000 expected arrivals; the standard deviation is 100, so +-5 % is 5 sigma.
    count = len(poisson_arrivals(5.0, 2000, seed=1))
    assert 9500 < count < 10500


def test_poisson_gaps_are_exponential():
    times = poisson_arrivals(4.0, 2000, seed=3)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    mean = sum(gaps) / len(gaps)
    assert mean == pytest.approx(0.25, rel=0.05)
    # Exponential: about e^-1 of the gaps are longer than the mean.
    assert sum(g > mean for g in gaps) / len(gaps) == pytest.approx(0.368, abs=0.03)


def test_poisson_sessions_follow_the_arrivals_within_bounds():
    shape = PoissonSessions(rate_per_s=1.0, mean_session_s=10, max_users=8, duration_s=300, seed=5)
    again = PoissonSessions(rate_per_s=1.0, mean_session_s=10, max_users=8, duration_s=300, seed=5)
    curve = users_over_time(shape)
    assert curve == users_over_time(again)
    assert all(1 <= users <= 8 for _, users in curve)
    # Mean active sessions is rate * mean session = 10 > cap, so the cap binds most of the time.
    assert sum(users == 8 for _, users in curve) > len(curve) / 2
    assert shape.at(300) is None


def test_poisson_sessions_average_rate_times_session_length():
    shape = PoissonSessions(rate_per_s=0.5, mean_session_s=6, max_users=MAX_USERS, duration_s=3000, seed=2)
    active = [shape.active_sessions(t) for t in range(100, 3000)]
    assert sum(active) / len(active) == pytest.approx(3.0, rel=0.15)


@pytest.mark.parametrize(
    "build",
    [
        lambda: Steady(users=MAX_USERS + 1, duration_s=10),
        lambda: Steady(users=1, duration_s=0),
        lambda: Steady(users=1, duration_s=10_000),
        lambda: Step(start_users=1, step_users=1, step_s=1, max_users=MAX_USERS + 1, duration_s=10),
        lambda: Spike(base_users=1, peak_users=MAX_USERS + 1, spike_at_s=1, spike_s=1, duration_s=10),
        lambda: PoissonSessions(rate_per_s=1, mean_session_s=1, max_users=MAX_USERS + 1, duration_s=10),
    ],
)
def test_every_shape_refuses_to_leave_the_bounds(build):
    with pytest.raises(LoadTestBoundsError):
        build()


def test_inconsistent_parameters_are_refused():
    with pytest.raises(ValueError, match="start_users"):
        Step(start_users=5, step_users=1, step_s=1, max_users=4, duration_s=10)
    with pytest.raises(ValueError, match="base_users"):
        Spike(base_users=5, peak_users=4, spike_at_s=1, spike_s=1, duration_s=10)


def test_registry_has_the_documented_profiles():
    assert set(PROFILES) == {"steady", "step", "spike", "poisson", "shared-prefix"}
    with pytest.raises(UnknownProfile, match="known: steady"):
        get_profile("nope")


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_stays_within_users_and_run_time(name):
    shape = get_profile(name).shape(users=12, duration_s=60, spawn_rate=4, seed=0)
    curve = users_over_time(shape, step_s=0.5)
    assert curve[0][0] == 0
    assert max(users for _, users in curve) <= 12
    assert min(users for _, users in curve) >= 1
    assert curve[-1][0] < 60
    assert shape.at(60) is None


def test_step_and_spike_profiles_reach_the_maximum_users():
    step = get_profile("step").shape(users=12, duration_s=60, spawn_rate=4)
    assert [step.at(t).users for t in (0, 15, 30, 45)] == [3, 6, 9, 12]
    spike = get_profile("spike").shape(users=12, duration_s=60, spawn_rate=4)
    assert [spike.at(t).users for t in (10, 23.9, 24, 35.9, 36, 50)] == [3, 3, 12, 12, 3, 3]


def test_profiles_pick_their_workload_and_think_time():
    assert get_profile("shared-prefix").prompt(0, 1).messages[0][0] == "system"
    assert get_profile("steady").prompt(0, 1).messages[0][0] == "user"
    assert get_profile("steady").think_time(random.Random(0)) == 0.5
    rng = random.Random(0)
    waits = [get_profile("poisson").think_time(rng) for _ in range(2000)]
    assert sum(waits) / len(waits) == pytest.approx(2.0, rel=0.1)
    assert len(set(waits)) == len(waits)
