"""Pulumi components of the Coupon Book Service (see ../README.md)."""

from couponinfra.postgres import Postgres, PostgresArgs
from couponinfra.redis import RedisCluster, RedisClusterArgs
from couponinfra.service import CouponService, CouponServiceArgs
from couponinfra.writer import OutboxWriter, OutboxWriterArgs

__all__ = [
    "CouponService",
    "CouponServiceArgs",
    "OutboxWriter",
    "OutboxWriterArgs",
    "Postgres",
    "PostgresArgs",
    "RedisCluster",
    "RedisClusterArgs",
]
