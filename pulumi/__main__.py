"""The Coupon Book Service on Kubernetes: `pulumi up --stack <stack>` (see README.md)."""

from couponinfra.program import deploy

deploy()
