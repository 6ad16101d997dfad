"""Configuration of the ``s3`` L2 adapter (one object per key in a bucket)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from lmcache_core.config.l2_adapter import L2AdapterConfigBase


class S3AdapterConfig(L2AdapterConfigBase):
    """The ``--l2-adapter`` JSON of ``{"type": "s3", ...}``.

    Credentials are either both static keys or neither (then the standard AWS
    credential chain is used).
    """

    s3_endpoint: str = Field(
        min_length=1,
        description=(
            "Bucket and server, 's3://<bucket>.<host>[:port]' or '<bucket>.<host>[:port]' "
            "(required): the bucket is the part before the first dot, the host the rest."
        ),
    )
    s3_region: str = Field(min_length=1, description="Region of the bucket (required).")
    s3_num_io_threads: int = Field(default=64, gt=0, description="I/O threads of the S3 client.")
    s3_prefer_http2: bool = Field(
        default=True, description="Prefer HTTP/2 when the server offers it."
    )
    s3_enable_s3express: bool = Field(
        default=False, description="Use S3 Express One Zone (directory bucket) signing."
    )
    s3_addressing_style: Literal["virtual", "path", "auto"] = Field(
        default="auto",
        description=(
            "How requests name the bucket: 'virtual' (https://<bucket>.<host>/<key>), 'path' "
            "(https://<host>/<bucket>/<key>) or 'auto' (path for an IP address or localhost "
            "host, whose virtual-hosted names do not resolve; virtual otherwise)."
        ),
    )
    disable_tls: bool = Field(default=False, description="Talk plain HTTP instead of HTTPS.")
    aws_access_key_id: str | None = Field(
        default=None, min_length=1, description="Static access key id; unset uses the AWS chain."
    )
    aws_secret_access_key: SecretStr | None = Field(
        default=None, description="Static secret key, required with aws_access_key_id."
    )
    max_capacity_gb: float = Field(
        default=0.0,
        ge=0.0,
        allow_inf_nan=False,
        description="Capacity in GiB enforced by an eviction block; 0 means unlimited.",
    )

    @field_validator("s3_endpoint")
    @classmethod
    def _virtual_hosted(cls, value: str) -> str:
        text = value.removeprefix("s3://").rstrip("/")
        bucket, _, host = text.partition(".")
        if "://" in text or "/" in text or not bucket or not host:
            raise ValueError("s3_endpoint must be 's3://<bucket>.<host>' or '<bucket>.<host>'")
        return value

    @model_validator(mode="after")
    def _both_keys_or_neither(self) -> S3AdapterConfig:
        if (self.aws_access_key_id is None) != (self.aws_secret_access_key is None):
            raise ValueError(
                "aws_access_key_id and aws_secret_access_key must be given together, or neither"
            )
        return self
