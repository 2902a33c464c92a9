"""The run tags the code location writes: every `churn-platform/…` key, in one place.

`TRIGGER` names what requested a run (a sensor or schedule's name), so the UI
and the tests can tell an automated run from a human's; the other keys say
why, or with what numbers. `EXTRACT_CONCURRENCY` is the key the instance's
run queue limits to one run at a time (dagster.yaml,
deploy/dagster.postgres.yaml): change it there too.
"""

PREFIX = "churn-platform/"

TRIGGER = PREFIX + "trigger"  # the sensor or schedule that requested the run
TRIGGER_REASON = PREFIX + "trigger-reason"  # customer_events_sensor: new-data or backlog
LAG = PREFIX + "lag"  # the extract's lag per partition when it was requested
LAG_TOTAL = PREFIX + "lag-total"
EXTRACT_CONCURRENCY = PREFIX + "extract"
# a run that follows new events (the automation's, an extract chained with today's assets):
# today's features recompute only the customers the new events touch
FOLLOWS_EVENTS = PREFIX + "follows-events"
# drift_retraining_sensor: the drift that requested training
MAX_PSI = PREFIX + "max_psi"
DRIFT_AS_OF = PREFIX + "drift_as_of"
DRIFTED_CHAMPION = PREFIX + "drifted_champion"
