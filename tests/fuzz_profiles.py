"""The hypothesis budget of the property-based tests, imported by each of them (not by conftest: the GPU session
runs the suite's conftest on a machine without hypothesis). CI: 60 derandomized examples per test (the same cases
every run); HYPOTHESIS_PROFILE=long runs 2000 per test."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=60, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("long", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "long"):
    raise ValueError(f"HYPOTHESIS_PROFILE={PROFILE!r}: use ci or long")
settings.load_profile(PROFILE)
