"""CouponService: the migration Job, then the API (Deployment, Service, HPA, PDB)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

from couponinfra.config import ApiSettings
from couponinfra.workload import (
    API_PORT,
    HEALTHZ_PATH,
    READYZ_PATH,
    TMP_MOUNT,
    TMP_VOLUME,
    AppEnv,
    app_pod_template,
    container_security,
    http_probe,
    labels,
    metadata,
    pod_security,
    resource_requirements,
    selector_labels,
)

# uvicorn finishes requests in flight for up to 10 s after SIGTERM; the preStop pause lets
# the endpoint removal reach every proxy first.
PRE_STOP_SECONDS = 5
GRACE_SECONDS = 30


@dataclass
class CouponServiceArgs:
    namespace: pulumi.Input[str]
    image: str  # repository:commit
    version: str  # the commit, for the version label
    instance: str  # the stack name, for the instance label
    env: AppEnv
    settings: ApiSettings
    # Created and ready before the migration runs (the in-cluster stores).
    after: Sequence[pulumi.Resource] = field(default_factory=list)


class CouponService(pulumi.ComponentResource):
    """`couponsvc migrate` as a Job, then `couponsvc serve` behind a Service, autoscaled."""

    migrate_job: k8s.batch.v1.Job
    deployment: k8s.apps.v1.Deployment
    service: k8s.core.v1.Service
    autoscaler: k8s.autoscaling.v2.HorizontalPodAutoscaler
    disruption_budget: k8s.policy.v1.PodDisruptionBudget

    def __init__(self, name: str, args: CouponServiceArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("couponsvc:app:CouponService", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.migrate_job = self._migrate_job(name, args, child)
        self.deployment = self._deployment(name, args, child)
        api_selector = selector_labels("api", args.instance)
        api_labels = labels("api", args.instance)

        self.service = k8s.core.v1.Service(
            f"{name}-api",
            metadata=metadata(f"{name}-api", args.namespace, api_labels),
            spec=k8s.core.v1.ServiceSpecArgs(
                type="ClusterIP",
                selector=api_selector,
                ports=[k8s.core.v1.ServicePortArgs(
                    name="http", port=80, target_port="http", protocol="TCP")],
            ),
            opts=child,
        )
        self.autoscaler = k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{name}-api",
            metadata=metadata(f"{name}-api", args.namespace, api_labels),
            spec=k8s.autoscaling.v2.HorizontalPodAutoscalerSpecArgs(
                scale_target_ref=k8s.autoscaling.v2.CrossVersionObjectReferenceArgs(
                    api_version="apps/v1", kind="Deployment",
                    name=self.deployment.metadata.name),
                min_replicas=args.settings.min_replicas,
                max_replicas=args.settings.max_replicas,
                metrics=[k8s.autoscaling.v2.MetricSpecArgs(
                    type="Resource",
                    resource=k8s.autoscaling.v2.ResourceMetricSourceArgs(
                        name="cpu",
                        target=k8s.autoscaling.v2.MetricTargetArgs(
                            type="Utilization",
                            average_utilization=args.settings.target_cpu_utilization),
                    ),
                )],
                behavior=k8s.autoscaling.v2.HorizontalPodAutoscalerBehaviorArgs(
                    scale_down=k8s.autoscaling.v2.HPAScalingRulesArgs(
                        stabilization_window_seconds=300)),
            ),
            opts=child,
        )
        self.disruption_budget = k8s.policy.v1.PodDisruptionBudget(
            f"{name}-api",
            metadata=metadata(f"{name}-api", args.namespace, api_labels),
            spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                max_unavailable=args.settings.max_unavailable,
                # A pod that is not ready (Redis down) protects nothing: let drains evict it.
                unhealthy_pod_eviction_policy="AlwaysAllow",
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=api_selector),
            ),
            opts=child,
        )
        self.register_outputs({
            "serviceName": self.service.metadata.name,
            "deploymentName": self.deployment.metadata.name,
            "migrateJobName": self.migrate_job.metadata.name,
        })

    def _migrate_job(self, name: str, args: CouponServiceArgs,
                     child: pulumi.ResourceOptions) -> k8s.batch.v1.Job:
        """`couponsvc migrate`, once per image: a new commit replaces the Job (a new name)."""
        job_labels = labels("migrate", args.instance, args.version)
        return k8s.batch.v1.Job(
            f"{name}-migrate",
            metadata=metadata(None, args.namespace, job_labels),
            spec=k8s.batch.v1.JobSpecArgs(
                backoff_limit=4,
                active_deadline_seconds=600,
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=job_labels),
                    spec=k8s.core.v1.PodSpecArgs(
                        restart_policy="Never",
                        security_context=pod_security(),
                        containers=[k8s.core.v1.ContainerArgs(
                            name="migrate",
                            image=args.image,
                            args=["migrate"],
                            env=args.env.without_token_key().env_vars(),
                            resources=resource_requirements(args.settings.resources),
                            security_context=container_security(),
                            volume_mounts=[TMP_MOUNT],
                        )],
                        volumes=[TMP_VOLUME],
                    ),
                ),
            ),
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(
                depends_on=list(args.after), replace_on_changes=["spec"])),
        )

    def _deployment(self, name: str, args: CouponServiceArgs,
                    child: pulumi.ResourceOptions) -> k8s.apps.v1.Deployment:
        return k8s.apps.v1.Deployment(
            f"{name}-api",
            metadata=metadata(f"{name}-api", args.namespace, labels("api", args.instance)),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                # No `replicas`: the HorizontalPodAutoscaler owns the count, and an update
                # of this Deployment must not reset it.
                selector=k8s.meta.v1.LabelSelectorArgs(
                    match_labels=selector_labels("api", args.instance)),
                strategy=k8s.apps.v1.DeploymentStrategyArgs(
                    type="RollingUpdate",
                    rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(
                        max_unavailable=0, max_surge="25%"),
                ),
                template=app_pod_template(
                    "api", args.instance, args.version, metrics_port=API_PORT,
                    grace_seconds=GRACE_SECONDS, container=k8s.core.v1.ContainerArgs(
                        name="api",
                        image=args.image,
                        args=["serve"],
                        ports=[k8s.core.v1.ContainerPortArgs(
                            name="http", container_port=API_PORT, protocol="TCP")],
                        env=args.env.env_vars(
                            COUPONSVC_HOST="0.0.0.0", COUPONSVC_PORT=str(API_PORT)),
                        resources=resource_requirements(args.settings.resources),
                        # Started: /healthz answers; failing ones are restarted.
                        startup_probe=http_probe(HEALTHZ_PATH, "http", 2, 30),
                        liveness_probe=http_probe(HEALTHZ_PATH, "http", 10, 3),
                        # Ready: Redis answers (503 otherwise); out of the Service if not.
                        readiness_probe=http_probe(READYZ_PATH, "http", 5, 2),
                        lifecycle=k8s.core.v1.LifecycleArgs(
                            pre_stop=k8s.core.v1.LifecycleHandlerArgs(
                                exec_=k8s.core.v1.ExecActionArgs(
                                    command=["sleep", str(PRE_STOP_SECONDS)]))),
                        security_context=container_security(),
                    )),
            ),
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(
                depends_on=[*args.after, self.migrate_job])),
        )
