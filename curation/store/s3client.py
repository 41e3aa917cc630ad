"""boto3 clients built from spec settings or the usual AWS_* environment. Credentials are never logged."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

from curation.config import S3Settings
from curation.errors import StoreError

for _noisy in ("boto3", "botocore", "s3transfer", "urllib3"):
    # botocore's DEBUG logs include signed headers; never let a caller's root DEBUG level reach them.
    logging.getLogger(_noisy).setLevel(logging.WARNING)


def make_s3_client(settings: S3Settings | None = None):
    """A client for `settings`; any field left None falls back to boto3's chain (AWS_* variables, profiles)."""
    settings = settings or S3Settings()
    secret = {
        "aws_access_key_id": settings.access_key_id,
        "aws_secret_access_key": settings.secret_access_key,
        "aws_session_token": settings.session_token,
    }
    kwargs = {key: value.get_secret_value() for key, value in secret.items() if value is not None}
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region or session.region_name or "us-east-1",
        config=Config(retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"}),
        **kwargs,
    )


def split_s3_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b')."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise StoreError(f"not an s3:// URI: {uri!r}")
    return parts.netloc, parts.path.lstrip("/")
