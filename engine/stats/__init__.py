"""Stats: pure statistics — intervals and tests, aggregation, corruption metrics, paired comparison."""
