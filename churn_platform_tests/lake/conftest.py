"""Fixtures of the lake tests: an S3-compatible server on loopback."""

from churn_platform_tests.lake.s3 import s3_lake_root, s3_server  # noqa: F401
