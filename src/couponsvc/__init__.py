"""Coupon Book Service: coupon books on Redis, atomically, over HTTP."""

__version__ = "0.1.0"
