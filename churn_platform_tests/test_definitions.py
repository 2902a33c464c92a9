"""churn_platform.definitions: every domain's factory is called the same way."""

from __future__ import annotations

import inspect

from churn_platform.definitions import DOMAINS
from churn_platform.defs.features.definitions import START_DATE_ENV, features_partitions

UNIFORM = [
    ("partitions", inspect.Parameter.KEYWORD_ONLY, None),
    ("environ", inspect.Parameter.KEYWORD_ONLY, None),
]


def test_every_domain_factory_takes_the_same_keyword_only_arguments():
    for domain in DOMAINS:
        parameters = inspect.signature(domain).parameters.values()
        assert [(p.name, p.kind, p.default) for p in parameters] == UNIFORM, domain.__qualname__


def test_the_partitioned_domains_share_the_partitions_they_are_given():
    environ = {START_DATE_ENV: "2024-01-01"}
    partitions = features_partitions(environ)
    for domain in DOMAINS:
        definitions = domain(partitions=partitions, environ=environ)
        for asset in definitions.assets or []:
            assert asset.partitions_def in (None, partitions), asset.key
