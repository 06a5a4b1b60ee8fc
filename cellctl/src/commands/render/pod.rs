//! What every redcell pod shares: a non-root, read-only, capability-free
//! security context (the Pod Security Standards' `restricted` profile), gRPC
//! probes on the health service, spread over zones and nodes, the topology
//! ConfigMap mounted as a directory, and credentials from Secrets.
//!
//! The topology is mounted as a whole directory, never with `subPath`: the
//! kubelet updates a ConfigMap volume by swapping a symlink (`..data`), which
//! a `subPath` mount never sees. The binaries reread cells.yaml by content at
//! every poll (`redcell_lifecycle::TopologyHandle`, one second by default),
//! so the swap reaches them without a restart, within the kubelet's sync
//! period (about a minute).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{
            Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
            GRPCAction, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
            SeccompProfile, SecretKeySelector, SecurityContext, ServicePort,
            TopologySpreadConstraint, Volume, VolumeMount,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use super::layout;

/// The gRPC health service name the probes ask about: the client API both
/// binaries serve (`redcell_cell::health::SERVICE`). A logic server reports
/// it `SERVING` only while its order DB answers with the expected schema.
pub const HEALTH_SERVICE: &str = "redcell.v1.RedEnvelope";

pub fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(layout::NONROOT_ID),
        run_as_group: Some(layout::NONROOT_ID),
        seccomp_profile: Some(runtime_default()),
        ..PodSecurityContext::default()
    }
}

pub fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        ..SeccompProfile::default()
    }
}

/// Readiness: out of the Service's endpoints after two failed checks (ten
/// seconds). A logic server whose DB is down reports `NOT_SERVING`, so it
/// leaves at once; routers also check health themselves.
pub fn readiness(port: i32) -> Probe {
    grpc_probe(port, 5, 2)
}

/// Liveness: restarted only after two minutes of failed checks. A logic
/// server is `NOT_SERVING` while its DB is unreachable, and a
/// CloudNativePG failover takes seconds: a tight liveness probe would restart
/// every server of the cell during one, for nothing (a server without its DB
/// serves nothing, and it recovers on its own when the DB is back).
pub fn liveness(port: i32) -> Probe {
    grpc_probe(port, 10, 12)
}

fn grpc_probe(port: i32, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        grpc: Some(GRPCAction {
            port,
            service: Some(HEALTH_SERVICE.to_owned()),
            ..GRPCAction::default()
        }),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(2),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

/// Spread over zones (one zone lost leaves the others serving) and nodes.
/// `zone_hard`: refuse to schedule rather than crowd a zone (logic servers);
/// otherwise prefer only (routers, which the autoscaler adds and removes).
pub fn spread(
    selector: &BTreeMap<String, String>,
    zone_hard: bool,
) -> Vec<TopologySpreadConstraint> {
    let constraint = |key: &str, hard: bool| TopologySpreadConstraint {
        max_skew: 1,
        topology_key: key.to_owned(),
        when_unsatisfiable: if hard {
            "DoNotSchedule"
        } else {
            "ScheduleAnyway"
        }
        .to_owned(),
        label_selector: Some(LabelSelector {
            match_labels: Some(selector.clone()),
            ..LabelSelector::default()
        }),
        ..TopologySpreadConstraint::default()
    };
    vec![
        constraint("topology.kubernetes.io/zone", zone_hard),
        constraint("kubernetes.io/hostname", false),
    ]
}

/// Requests and limits: CPU as requested/limited, memory limited at what is
/// requested plus headroom.
pub fn resources(
    cpu_request: &str,
    memory_request: &str,
    cpu_limit: &str,
    memory_limit: &str,
) -> ResourceRequirements {
    let pair = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ])
    };
    ResourceRequirements {
        requests: Some(pair(cpu_request, memory_request)),
        limits: Some(pair(cpu_limit, memory_limit)),
        ..ResourceRequirements::default()
    }
}

pub fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

/// Prometheus' conventional scrape annotations, for the admin port.
pub fn scrape_annotations() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        (
            "prometheus.io/port".to_owned(),
            layout::METRICS_PORT.to_string(),
        ),
        ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
    ])
}

pub fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

pub fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                ..SecretKeySelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The env of a DSN whose password comes from a cluster's credentials
/// Secret: `password_var` first (the Secret's `password`), then `dsn_var`
/// referring to it as `$(password_var)`, which the kubelet expands because
/// it is defined earlier in the list. The password therefore never appears
/// in a manifest or in cells.yaml; it must be URL-safe (e.g. hex).
pub fn dsn_env(
    dsn_var: &str,
    password_var: &str,
    cluster: &str,
    owner: &str,
    database: &str,
    namespace: &str,
) -> [EnvVar; 2] {
    let secret = layout::credentials_secret(cluster);
    let host = layout::primary_host(cluster, namespace);
    [
        secret_env(password_var, &secret, "password"),
        env(
            dsn_var,
            format!(
                "postgres://{owner}:$({password_var})@{host}:{}/{database}",
                layout::POSTGRES_PORT
            ),
        ),
    ]
}

/// The topology ConfigMap as a volume, and its mount.
pub fn topology_volume() -> (Volume, VolumeMount) {
    (
        Volume {
            name: "topology".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: layout::TOPOLOGY_CONFIGMAP.to_owned(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        VolumeMount {
            name: "topology".to_owned(),
            mount_path: layout::TOPOLOGY_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
    )
}

/// `REDCELL_TOPOLOGY`: where every binary (and `cellctl`) reads cells.yaml.
pub fn topology_env() -> EnvVar {
    env(
        "REDCELL_TOPOLOGY",
        format!("{}/{}", layout::TOPOLOGY_DIR, layout::TOPOLOGY_KEY),
    )
}

/// The pod template of a logic server or a router: scraped, no service
/// account token, no service links, the restricted pod security context,
/// spread over zones and nodes (`zone_hard`: see [`spread`]).
pub fn template(
    labels: BTreeMap<String, String>,
    selector: &BTreeMap<String, String>,
    zone_hard: bool,
    container: Container,
    volumes: Vec<Volume>,
) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(scrape_annotations()),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(30),
            security_context: Some(pod_security()),
            topology_spread_constraints: Some(spread(selector, zone_hard)),
            containers: vec![container],
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
    }
}

/// A Service's gRPC port (`grpc`, cleartext HTTP/2) to the pods' `grpc` port.
pub fn grpc_service_port(port: i32) -> ServicePort {
    ServicePort {
        name: Some("grpc".to_owned()),
        port,
        target_port: Some(IntOrString::String("grpc".to_owned())),
        protocol: Some("TCP".to_owned()),
        app_protocol: Some("kubernetes.io/h2c".to_owned()),
        ..ServicePort::default()
    }
}

/// A PodDisruptionBudget that lets one pod of `labels` go at a time (a
/// drain never takes two logic servers of a cell, or two routers of a
/// region, at once).
pub fn one_at_a_time(
    metadata: ObjectMeta,
    labels: &BTreeMap<String, String>,
) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector(labels)),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

pub fn selector(labels: &BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels.clone()),
        ..LabelSelector::default()
    }
}
