"""`churn-platform training-set rebuild --model VERSION`: make a model's training set again.

A model records the Delta table versions its training set was built from
(customer_features and churn_labels), the training_set table's own version and
a sha256 of the rows (`training.json`, key "training_set"). `rebuild` reads the
two input tables at those versions (time travel), builds the set again and
compares its sha256 with the recorded one. Exit 0: equal; 1: it differs; 2: bad
input (no such model, a model trained before versions were recorded, or a
version no longer readable because vacuum removed it).
"""

from __future__ import annotations

import argparse
import json

from churn_platform.cli import UserError
from churn_platform.cli.common import add_lake_argument, lake_root

DIFFERS = 1


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "training-set",
        help="rebuild a model's training set from the lake table versions it recorded",
        description="Work with the training sets models were trained on.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    rebuild = actions.add_parser(
        "rebuild",
        help="build a model's training set again from its recorded table versions and compare",
        description="Reads customer_features and churn_labels at the Delta versions the model "
        "recorded, builds its training set again and compares the rows' sha256 with the one "
        "recorded at training time. Exit 0: equal; 1: differs; 2: bad input.",
    )
    rebuild.add_argument("--model", required=True, help="model version (models/churn/<version>)")
    add_lake_argument(rebuild)
    rebuild.add_argument("--json", action="store_true", help="print the result as one JSON object")
    rebuild.set_defaults(handler=run_rebuild)


def run_rebuild(args: argparse.Namespace) -> int:
    from churn_platform.lake.store import Lake, LakeError
    from churn_platform.ml import registry
    from churn_platform.ml.training_set import TrainingSetError, rebuild_training_set

    lake = Lake(args.lake or lake_root())
    try:
        record = registry.read_record(lake, args.model)
    except ValueError as exc:  # a version name that is not one
        raise UserError(f"--model: {exc}") from None
    except LakeError as exc:
        raise UserError(f"--model {args.model}: {exc}") from None
    lineage = record.training.get("training_set") or {}
    try:
        rebuilt = rebuild_training_set(lake, lineage, record.churn)
    except TrainingSetError as exc:
        raise UserError(f"model {args.model}: {exc}") from None
    except LakeError as exc:
        raise UserError(f"model {args.model}: {exc} (--lake {lake.uri})") from None
    training = rebuilt.training
    result = {
        "model": args.model,
        "equal": rebuilt.equal,
        "features_version": training.features_version,
        "labels_version": training.labels_version,
        "training_set_version": lineage.get("training_set_version"),
        "rows": training.rows,
        "sha256": training.sha256(),
        "recorded_sha256": rebuilt.recorded_sha256,
    }
    if args.json:
        print(json.dumps(result))
    else:
        verdict = "equal to" if rebuilt.equal else "DIFFERS from"
        print(
            f"training set of model {args.model} rebuilt from customer_features "
            f"v{training.features_version} and churn_labels v{training.labels_version}: "
            f"{training.rows:,} rows, sha256 {result['sha256'][:16]}…, {verdict} the recorded "
            f"set (sha256 {rebuilt.recorded_sha256[:16]}…, training_set "
            f"v{result['training_set_version']})"
        )
    return 0 if rebuilt.equal else DIFFERS
