"""A model-checked state machine (model_machine.py) against a real
redis-server: random sequences of create book / upload / generate / assign
(random and by code) / lock / unlock / redeem / retry with an
Idempotency-Key / list, with locks expiring and validity windows ending in
between. Every answer (success, or the exact problem type), every outbox
event, the book counts and the state in Redis must match the plain model in
coupon_model.py after every step.

One machine, two drivers: the service layer as app.py builds it (without
Postgres; both hot-path clients), and HTTP against a running `couponsvc serve`.
Runs are derandomized, so a failure reproduces; hypothesis then prints the
shortest sequence of steps it found.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from hypothesis.stateful import run_state_machine_as_test
from redis import Redis

from .model_drivers import Driver
from .model_http_driver import HttpDriver
from .model_machine import CouponMachine
from .model_service_driver import ServiceDriver
from .model_strategies import machine_settings
from .servers import ApiServer, RedisServer

# A passing run takes seconds; a failing one also shrinks (hypothesis stops
# shrinking after 300 s), which the default timeout would cut short.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def model_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("model-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def model_api(model_redis: RedisServer,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """The API with the suite's default test settings (rate limits off)."""
    server = ApiServer(model_redis.url, tmp_path_factory.mktemp("model-api")).start()
    yield server
    server.stop()


@pytest.fixture
def inspector(model_redis: RedisServer) -> Iterator[Redis]:
    client = Redis.from_url(model_redis.url, decode_responses=True)
    yield client
    client.close()


@pytest.mark.parametrize(("hot_path_client", "examples"), [("resp", 80), ("redis-py", 25)])
def test_service_layer_follows_the_model(model_redis: RedisServer, inspector: Redis,
                                         hot_path_client: str, examples: int) -> None:
    class ServiceMachine(CouponMachine):
        redis = inspector

        def make_driver(self) -> Driver:
            return ServiceDriver(model_redis.url, hot_path_client)

    run_state_machine_as_test(ServiceMachine, settings=machine_settings(examples, 100))


def test_http_api_follows_the_model(model_api: ApiServer, inspector: Redis) -> None:
    with httpx.Client(base_url=model_api.base_url, timeout=10.0) as client:
        class HttpMachine(CouponMachine):
            redis = inspector

            def make_driver(self) -> Driver:
                return HttpDriver(client, model_api)

        run_state_machine_as_test(HttpMachine, settings=machine_settings(50, 100))
