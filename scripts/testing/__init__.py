"""eventkit's test harness for your own aggregates, projections and reactions."""
