//! The routers on Kubernetes: per region a Deployment (the router's
//! `--region` is where new envelopes of callers who name no region go), a
//! Service, a HorizontalPodAutoscaler and a PodDisruptionBudget.
//!
//! Routers are stateless (DESIGN §6), so a Deployment with no `replicas` of
//! its own: the autoscaler owns the count (a `replicas` in the manifest would
//! reset it at every `kubectl apply`). The Service is a ClusterIP; how it is
//! exposed (a LoadBalancer, a Gateway's GRPCRoute) is the cluster's choice,
//! see docs/KUBERNETES.md.

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        autoscaling::v2::{
            CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
            MetricSpec, MetricTarget, ResourceMetricSource,
        },
        core::v1::{Container, SecretVolumeSource, Service, ServiceSpec, Volume, VolumeMount},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::{Settings, layout, pod};

/// Routers per region: at least two (one zone lost leaves one), at most ten.
pub const MIN_REPLICAS: i32 = 2;
pub const MAX_REPLICAS: i32 = 10;

/// The objects of one region's routers.
#[derive(Debug)]
pub struct RouterObjects {
    pub deployment: Deployment,
    pub service: Service,
    pub autoscaler: HorizontalPodAutoscaler,
    pub budget: PodDisruptionBudget,
}

pub fn render(region: &str, settings: &Settings) -> RouterObjects {
    let name = layout::router_workload(region);
    let selector = layout::router_selector(region);
    let metadata = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(settings.namespace.clone()),
        labels: Some(layout::object_labels(&selector)),
        ..ObjectMeta::default()
    };
    let (topology, topology_mount) = pod::topology_volume();
    let jwt = Volume {
        name: "jwt".to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(layout::JWT_SECRET.to_owned()),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let jwt_mount = VolumeMount {
        name: "jwt".to_owned(),
        mount_path: layout::JWT_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    let container = Container {
        name: "router".to_owned(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        command: Some(vec!["/usr/local/bin/router".to_owned()]),
        env: Some(vec![
            pod::topology_env(),
            pod::env(
                "REDCELL_ROUTER_LISTEN",
                format!("0.0.0.0:{}", layout::ROUTER_GRPC_PORT),
            ),
            pod::env("REDCELL_REGION", region),
            pod::env(
                "REDCELL_JWT_RS256_PUBLIC_KEY_FILE",
                format!("{}/{}", layout::JWT_DIR, layout::JWT_KEY),
            ),
            pod::env("REDCELL_LOG_FORMAT", "json"),
            pod::env(
                "REDCELL_ADMIN_LISTEN",
                format!("0.0.0.0:{}", layout::METRICS_PORT),
            ),
            pod::secret_env(
                "REDCELL_INTERNAL_TOKEN",
                layout::INTERNAL_TOKEN_SECRET,
                "token",
            ),
        ]),
        ports: Some(vec![
            pod::port("grpc", layout::ROUTER_GRPC_PORT),
            pod::port("metrics", layout::METRICS_PORT),
        ]),
        readiness_probe: Some(pod::readiness(layout::ROUTER_GRPC_PORT)),
        liveness_probe: Some(pod::liveness(layout::ROUTER_GRPC_PORT)),
        resources: Some(pod::resources("250m", "128Mi", "2", "512Mi")),
        security_context: Some(pod::container_security()),
        volume_mounts: Some(vec![topology_mount, jwt_mount]),
        ..Container::default()
    };
    let deployment = Deployment {
        metadata: metadata.clone(),
        spec: DeploymentSpec {
            selector: pod::selector(&selector),
            template: pod::template(
                selector.clone(),
                &selector,
                false,
                container,
                vec![topology, jwt],
            ),
            ..DeploymentSpec::default()
        },
        status: None,
    };
    let service = Service {
        metadata: metadata.clone(),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector.clone()),
            ports: Some(vec![pod::grpc_service_port(layout::ROUTER_GRPC_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    let autoscaler = HorizontalPodAutoscaler {
        metadata: metadata.clone(),
        spec: HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_owned()),
                kind: "Deployment".to_owned(),
                name: name.clone(),
            },
            min_replicas: Some(MIN_REPLICAS),
            max_replicas: MAX_REPLICAS,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".to_owned(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".to_owned(),
                    target: MetricTarget {
                        type_: "Utilization".to_owned(),
                        average_utilization: Some(70),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        },
        status: None,
    };
    let budget = pod::one_at_a_time(metadata, &selector);
    RouterObjects {
        deployment,
        service,
        autoscaler,
        budget,
    }
}
