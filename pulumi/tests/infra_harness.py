"""Runs the Pulumi program for one stack under pulumi's mocks and records what it declared.

Offline, with no Pulumi CLI: `pulumi.runtime.set_mocks` stands in for the engine, and the
stack's config comes from its Pulumi.<stack>.yaml. The CLI would decrypt each `secure:`
value; here each gets a made-up secret, passed as a secret key, as the CLI passes them.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pulumi
import yaml  # type: ignore[import-untyped, unused-ignore]
from couponinfra.config import NAMESPACE, ConfigError
from couponinfra.program import deploy
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc

PROGRAM_DIR = Path(__file__).resolve().parents[1]
PROJECT = "couponsvc"

# Non-secret getters of pulumi.Config: a secret key read through one would be plain text.
PLAIN_GETTERS = (
    "get", "get_bool", "get_int", "get_float", "get_object",
    "require", "require_bool", "require_int", "require_float", "require_object",
)


# The tests' `stacks` fixture: stacks(name) or stacks(name, overrides) -> Build.
Builder = Callable[..., "Build"]


def stack_names() -> list[str]:
    """Every stack file next to Pulumi.yaml."""
    return sorted(path.name[len("Pulumi."):-len(".yaml")]
                  for path in PROGRAM_DIR.glob("Pulumi.*.yaml"))


def stack_file(stack: str) -> dict[str, Any]:
    """The `config:` mapping of Pulumi.<stack>.yaml, as written."""
    document = yaml.safe_load((PROGRAM_DIR / f"Pulumi.{stack}.yaml").read_text())
    config: dict[str, Any] = document["config"]
    return config


def fake_secret(stack: str, key: str) -> str:
    """A made-up secret value, unique per stack and key, with characters URLs must quote."""
    digest = hashlib.sha256(f"{stack}/{key}".encode()).hexdigest()[:24]
    return f"S3cr/{key}@{digest}:x+y"


def secret_forms(value: str) -> tuple[str, ...]:
    """The value as it may appear: itself, or quoted into a URL."""
    return (value, quote(value, safe=""))


@dataclass
class Declared:
    """One resource the program declared: its type token, name and inputs."""

    typ: str
    name: str
    inputs: dict[str, Any]  # secret values kept wrapped (rpc secret markers)
    # What it waits for: (type token, name) of each resource it depends on, explicitly
    # (depends_on, a component standing for its children) or through an input.
    depends_on: list[tuple[str, str]] = field(default_factory=list)
    # Its name in the cluster: metadata.name, or the one the provider would generate.
    object_name: str | None = None

    @property
    def plain(self) -> dict[str, Any]:
        """The inputs with the secret markers removed."""
        result: dict[str, Any] = unwrap(self.inputs)
        return result

    @property
    def kind(self) -> str:
        """The Kubernetes kind: Deployment, Service, ... (the type token's last part)."""
        return self.typ.rsplit(":", 1)[-1]


@dataclass
class Build:
    """What one run of the program declared for one stack."""

    stack: str
    secrets: dict[str, str]  # config key -> the made-up plain value the run was given
    resources: list[Declared]
    outputs: dict[str, Any]  # the stack's exports, resolved
    plain_reads: set[str]  # config keys read through a non-secret getter
    log: list[logging.LogRecord] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Declared]:
        return [r for r in self.resources if r.kind == kind]

    def depends(self, dependent: Declared, dependency: Declared) -> bool:
        return (dependency.typ, dependency.name) in dependent.depends_on

    def one(self, kind: str, name: str) -> Declared:
        found = [r for r in self.of_kind(kind) if r.name == name]
        assert len(found) == 1, f"{self.stack}: {len(found)} {kind} named {name!r}"
        return found[0]


def unwrap(value: Any) -> Any:
    """A deserialized input with every secret marker replaced by the value it wraps."""
    if rpc.is_rpc_secret(value):
        return unwrap(rpc.unwrap_rpc_secret(value))
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


class RecordingMocks(pulumi.runtime.Mocks):
    """Echoes inputs as outputs, names nameless Kubernetes objects as the provider would."""

    def __init__(self) -> None:
        self.resources: list[Declared] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[
            Any, Any]]:
        declared = Declared(args.typ, args.name, args.inputs)
        self.resources.append(declared)
        state = dict(args.inputs)
        meta = state.get("metadata")
        if args.typ.startswith("kubernetes:") and isinstance(meta, dict):
            if not meta.get("name"):
                # The provider's auto-naming: <logical name>-<random suffix>.
                suffix = hashlib.sha256(args.name.encode()).hexdigest()[:8]
                state["metadata"] = meta = {**meta, "name": f"{args.name}-{suffix}"}
            declared.object_name = meta["name"]
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[Any, Any], None]:
        return {}, None


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """The mock engine, noting each registration's dependencies."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.dependencies: dict[tuple[str, str], list[tuple[str, str]]] = {}

    def RegisterResource(self, request: Any) -> Any:  # the gRPC method
        self.dependencies[(request.type, request.name)] = [
            _type_and_name(urn) for urn in request.dependencies]
        return super().RegisterResource(request)  # type: ignore[no-untyped-call]


def _type_and_name(urn: str) -> tuple[str, str]:
    """urn:pulumi:<stack>::<project>::<parent types$>type::name -> (type, name)."""
    *_, types, name = urn.split("::")
    return types.rsplit("$", 1)[-1], name


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def stack_config(stack: str, overrides: Mapping[str, Any] | None = None
                 ) -> tuple[dict[str, str], list[str], dict[str, str]]:
    """The config map the CLI would pass for this stack, its secret keys, and their values.

    `overrides` replaces keys (short names, without `couponsvc:`); None removes one.
    """
    raw = {key.split(":", 1)[1]: value for key, value in stack_file(stack).items()
           if key.startswith(f"{NAMESPACE}:")}
    for key, value in (overrides or {}).items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    config: dict[str, str] = {}
    secrets: dict[str, str] = {}
    for key, value in raw.items():
        if isinstance(value, Mapping) and set(value) == {"secure"}:
            value = secrets[key] = fake_secret(stack, key)
        elif isinstance(value, Secret):
            value = secrets[key] = value.value
        # As the CLI passes them: strings as they are, anything else as JSON.
        config[f"{NAMESPACE}:{key}"] = value if isinstance(value, str) else json.dumps(value)
    return config, [f"{NAMESPACE}:{key}" for key in secrets], secrets


@dataclass(frozen=True)
class Secret:
    """An override that the test passes as a secret key (as `secure:` in a stack file)."""

    value: str


@contextmanager
def _spy_on_plain_getters() -> Iterator[set[str]]:
    seen: set[str] = set()
    originals = {name: getattr(pulumi.Config, name) for name in PLAIN_GETTERS}

    def spy(original: Callable[..., Any]) -> Callable[..., Any]:
        def getter(self: pulumi.Config, key: str, *args: Any, **kwargs: Any) -> Any:
            seen.add(self.full_key(key))
            return original(self, key, *args, **kwargs)
        return getter

    for name, original in originals.items():
        setattr(pulumi.Config, name, spy(original))
    try:
        yield seen
    finally:
        for name, original in originals.items():
            setattr(pulumi.Config, name, original)


def _quiet_config_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A build refused on purpose (an apply raising ConfigError) fails the run once, with
    the error; pulumi's other futures that held it are left unretrieved and asyncio would
    report each one again when collected. Anything else is reported as usual."""
    if isinstance(context.get("exception"), ConfigError):
        return
    loop.default_exception_handler(context)


class MockEventLoops:
    """The event loops pulumi's mocks run on, all closed at the end.

    The mock monitor answers each resource registration on a thread of the loop's default
    executor and gives every such thread an event loop of its own, which pulumi never
    closes (a ResourceWarning when collected). Here the threads get their loops from us,
    and `close` shuts the threads down and closes every loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread_loops: list[asyncio.AbstractEventLoop] = []
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(_quiet_config_errors)
        self._executor = ThreadPoolExecutor(
            max_workers=4, thread_name_prefix="pulumi-mocks", initializer=self._thread_loop)
        self.loop.set_default_executor(self._executor)
        asyncio.set_event_loop(self.loop)

    def _thread_loop(self) -> None:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(_quiet_config_errors)
        asyncio.set_event_loop(loop)
        with self._lock:
            self._thread_loops.append(loop)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        for loop in self._thread_loops:
            loop.close()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        self.loop.close()

    def __enter__(self) -> MockEventLoops:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def build(stack: str, overrides: Mapping[str, Any] | None = None) -> Build:
    """Runs the program for `stack` in a fresh context (its own root stack, config, mocks).

    Call it inside `MockEventLoops` (the tests' session fixture does).
    """
    config, secret_keys, secrets = stack_config(stack, overrides)
    result: Build = contextvars.Context().run(_build, stack, config, secret_keys, secrets)
    return result


def _build(stack: str, config: dict[str, str], secret_keys: list[str],
           secrets: dict[str, str]) -> Build:
    mocks = RecordingMocks()
    monitor = RecordingMonitor(mocks)
    handler = _ListHandler()
    logger = logging.getLogger(f"couponinfra-tests.{stack}")
    logger.propagate = False
    logger.handlers = [handler]
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False,
                             monitor=monitor, logger=logger)
    pulumi.runtime.set_all_config(config, secret_keys)
    outputs: dict[str, Any] = {}

    def program() -> pulumi.Output[None]:
        deploy()
        root = pulumi.runtime.get_root_resource()
        assert root is not None
        exports: dict[str, Any] = getattr(root, "outputs", {})
        return pulumi.Output.all(**exports).apply(outputs.update)

    with _spy_on_plain_getters() as plain_reads:
        pulumi.runtime.test(program)()  # type: ignore[no-untyped-call]
    for resource in mocks.resources:
        resource.depends_on = monitor.dependencies.get((resource.typ, resource.name), [])
    return Build(stack, secrets, mocks.resources, outputs, plain_reads, handler.records)


# --- Reading pod templates ---------------------------------------------------------------


def pod_spec(workload: Declared) -> dict[str, Any]:
    """The pod template's spec of a Deployment, StatefulSet or Job."""
    spec: dict[str, Any] = workload.plain["spec"]["template"]["spec"]
    return spec


def container(workload: Declared, name: str) -> dict[str, Any]:
    found = [c for c in pod_spec(workload)["containers"] if c["name"] == name]
    assert len(found) == 1, f"{workload.name}: no single container {name!r}"
    spec: dict[str, Any] = found[0]
    return spec


def env_of(spec: dict[str, Any]) -> dict[str, Any]:
    """A container's environment: name -> literal value, or its `valueFrom`."""
    env: dict[str, Any] = {var["name"]: var["value"] if "value" in var else var["valueFrom"]
                           for var in spec.get("env", [])}
    return env


def port_number(spec: dict[str, Any], port: str | float) -> int:
    """A probe's or a Service's port, named or numbered, as the container's number."""
    if isinstance(port, str):
        numbers = [int(p["containerPort"]) for p in spec["ports"] if p["name"] == port]
        assert len(numbers) == 1, f"no single container port named {port!r}"
        return numbers[0]
    return int(port)
