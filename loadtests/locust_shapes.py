"""Locust ``LoadTestShape`` adapters over the pure shapes of ``shapes.py``: ``tick()`` only reads the clock.

Imports Locust (and so gevent's monkey-patching): only locustfiles import this module.

``ProfileShape`` is the one ``locustfile.py`` exposes: it builds its shape from the command line (``-u`` as
the most users, ``-r``, ``--run-time`` as the shape's duration, ``--sf-profile``, ``--sf-seed``). The fixed
classes below are for hand-written locustfiles; subclass one and set its class attributes.
"""

from __future__ import annotations

import logging

from locust import LoadTestShape

from loadtests.guards import MAX_RUN_TIME_S, MAX_USERS
from loadtests.profiles import get_profile
from loadtests.shapes import PoissonSessions, Shape, Spike, Steady, Step

logger = logging.getLogger(__name__)

DEFAULT_DURATION_S = 300.0
"""The web UI may start a run without ``--run-time``; the shape still ends by itself."""


class PureShape(LoadTestShape):
    """Calls ``build()``'s pure shape with the elapsed time; rebuilt at each start (the web UI can restart)."""

    abstract = True
    _shape: Shape | None = None

    def build(self) -> Shape:
        raise NotImplementedError

    def reset_time(self) -> None:
        super().reset_time()
        self._shape = None

    def tick(self) -> tuple[int, float] | None:
        if self._shape is None:
            self._shape = self.build()
        tick = self._shape.at(self.get_run_time())
        return None if tick is None else tick.as_locust()


class SteadyLoadShape(PureShape):
    users = 4
    duration_s = 60.0
    spawn_rate = 10.0

    def build(self) -> Shape:
        return Steady(users=self.users, duration_s=self.duration_s, spawn_rate=self.spawn_rate)


class StepLoadShape(PureShape):
    start_users = 1
    step_users = 1
    step_s = 15.0
    max_users = 4
    duration_s = 60.0
    spawn_rate = 10.0

    def build(self) -> Shape:
        return Step(
            start_users=self.start_users,
            step_users=self.step_users,
            step_s=self.step_s,
            max_users=self.max_users,
            duration_s=self.duration_s,
            spawn_rate=self.spawn_rate,
        )


class SpikeLoadShape(PureShape):
    base_users = 1
    peak_users = 8
    spike_at_s = 20.0
    spike_s = 10.0
    duration_s = 60.0
    spawn_rate = 10.0

    def build(self) -> Shape:
        return Spike(
            base_users=self.base_users,
            peak_users=self.peak_users,
            spike_at_s=self.spike_at_s,
            spike_s=self.spike_s,
            duration_s=self.duration_s,
            spawn_rate=self.spawn_rate,
        )


class PoissonLoadShape(PureShape):
    rate_per_s = 0.2
    mean_session_s = 10.0
    max_users = 8
    duration_s = 60.0
    seed = 0

    def build(self) -> Shape:
        return PoissonSessions(
            rate_per_s=self.rate_per_s,
            mean_session_s=self.mean_session_s,
            max_users=self.max_users,
            duration_s=self.duration_s,
            seed=self.seed,
        )


class ProfileShape(PureShape):
    """The shape of ``--sf-profile``, scaled by ``-u``/``-r``/``--run-time`` (hence ``use_common_options``)."""

    use_common_options = True

    def build(self) -> Shape:
        assert self.runner is not None, "Locust sets runner before the first tick"
        options = self.runner.environment.parsed_options
        assert options is not None, "the locust command parses options before any run starts"
        users = int(options.num_users or 1)
        if users > MAX_USERS:
            # The CLI and the locustfile refuse this up front; only the web UI's form can get here.
            logger.warning("capping %d users at the load-test maximum of %d", users, MAX_USERS)
            users = MAX_USERS
        duration = float(options.run_time or DEFAULT_DURATION_S)
        spawn_rate = float(options.spawn_rate or users)
        return get_profile(options.sf_profile).shape(
            users=users, duration_s=min(duration, MAX_RUN_TIME_S), spawn_rate=spawn_rate, seed=options.sf_seed
        )
