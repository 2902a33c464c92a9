"""Running the platform the way teams run Dagster: on PostgreSQL, with the webserver,
the daemon and the code location as separate processes (docs/deployment.md).

The files live in the repository's deploy/ directory: `dagster.postgres.yaml` (the
instance, copied into DAGSTER_HOME as dagster.yaml) and `workspace.yaml` (the code
location over gRPC). `check` tries both before anything starts.
"""

from pathlib import Path

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"
POSTGRES_DAGSTER_YAML = DEPLOY_DIR / "dagster.postgres.yaml"
GRPC_WORKSPACE_YAML = DEPLOY_DIR / "workspace.yaml"
LOCATION_NAME = "churn_platform"
