"""boto3 clients built from spec settings or the usual AWS_* environment. Credentials are never logged.

boto3 is imported on first use, so a machine without it (a bare GPU box running the trainer) still imports
curation; only S3 paths need it.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from curation.config import S3Settings
from curation.errors import StoreError

for _noisy in ("boto3", "botocore", "s3transfer", "urllib3"):
    # botocore's DEBUG logs include signed headers; never let a caller's root DEBUG level reach them.
    logging.getLogger(_noisy).setLevel(logging.WARNING)


def make_s3_client(settings: S3Settings | None = None):
    """A client for `settings`; any field left None falls back to boto3's chain (AWS_* variables, profiles)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as error:
        raise StoreError(f"S3 needs boto3, which is not installed here ({error}): pip install boto3") from error
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


def s3_errors() -> tuple[type[Exception], ...]:
    """botocore's error types, for except clauses around S3 calls; empty where boto3 is not installed (then no
    S3 call can have raised one)."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return ()
    return BotoCoreError, ClientError


def split_s3_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b')."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise StoreError(f"not an s3:// URI: {uri!r}")
    return parts.netloc, parts.path.lstrip("/")
