"""One extract run in a process of its own, as a run worker would execute it.

`python -m churn_platform_tests.deploy.extract_run job|asset [TAGS_JSON]`: the extract job
(with the sensor's tags) or the asset materialized from the UI (the implicit asset job),
on the instance of $DAGSTER_HOME, with the code location's settings from the environment.
Prints the run id and whether it succeeded, as JSON.
"""

from __future__ import annotations

import json
import sys

import dagster as dg

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def main(argv: list[str]) -> int:
    from churn_platform.definitions import defs
    from churn_platform.defs.ingestion.assets import raw_customer_events_job

    how, tags = argv[0], json.loads(argv[1]) if len(argv) > 1 else {}
    definitions = defs()
    with dg.DagsterInstance.get() as instance:
        if how == "job":
            job = definitions.resolve_job_def(raw_customer_events_job.name)
            result = job.execute_in_process(instance=instance, tags=tags, run_config=QUIET)
        else:
            job = definitions.resolve_implicit_global_asset_job_def()
            result = job.execute_in_process(
                instance=instance,
                asset_selection=[dg.AssetKey("raw_customer_events")],
                run_config=QUIET,
            )
    print(json.dumps({"run_id": result.run_id, "success": result.success}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
