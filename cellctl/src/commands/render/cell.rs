//! A cell's logic servers on Kubernetes: a StatefulSet with one pod per
//! server cells.yaml lists, its headless Service and a PodDisruptionBudget.
//!
//! A StatefulSet rather than a Deployment because routers address logic
//! servers one by one (rendezvous hashing over the cell's `servers`, DESIGN
//! §6), so each server needs a name that outlives its pod: pod `cell-n1-0`
//! is `cell-n1-0.cell-n1.<namespace>.svc` through restarts and reschedules,
//! and the in-cluster cells.yaml lists exactly those names
//! ([`layout::server_address`]). The pods keep nothing on disk (no volume
//! claims), so they start in parallel rather than one by one.
//!
//! The headless Service publishes not-ready pods too: routers run their own
//! gRPC health checks and take a `NOT_SERVING` server out of rotation, which
//! they can tell apart from a name that does not resolve.

use k8s_openapi::{
    api::{
        apps::v1::{StatefulSet, StatefulSetSpec},
        core::v1::{Container, Service, ServiceSpec},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use redcell_topology::Topology;

use super::{Settings, database::Database, layout, pod};

/// The objects of one cell (its DB's `Cluster` is rendered with the others).
#[derive(Debug)]
pub struct CellObjects {
    pub stateful_set: StatefulSet,
    pub service: Service,
    pub budget: PodDisruptionBudget,
}

pub fn render(
    topology: &Topology,
    cell: &redcell_topology::Cell,
    database: &Database,
    settings: &Settings,
) -> CellObjects {
    let name = layout::cell_workload(&cell.name);
    let selector = layout::cell_selector(&cell.name);
    let region = topology.region_name(cell.region).unwrap_or_default();
    let mut pod_labels = selector.clone();
    pod_labels.insert(layout::REGION_LABEL.to_owned(), region.to_owned());
    let metadata = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(settings.namespace.clone()),
        labels: Some(layout::object_labels(&pod_labels)),
        ..ObjectMeta::default()
    };

    let mut env = vec![
        pod::topology_env(),
        pod::env("REDCELL_CELL", cell.name.clone()),
        pod::env(
            "REDCELL_LISTEN",
            format!("0.0.0.0:{}", layout::CELL_GRPC_PORT),
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
    ];
    env.extend(database.env("REDCELL_DB_DSN", "DB_PASSWORD", &settings.namespace));
    env.extend(Database::ledger().env(
        "REDCELL_LEDGER_DSN",
        "LEDGER_PASSWORD",
        &settings.namespace,
    ));
    let (volume, mount) = pod::topology_volume();
    let container = Container {
        name: "cell".to_owned(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        command: Some(vec!["/usr/local/bin/cell".to_owned()]),
        env: Some(env),
        ports: Some(vec![
            pod::port("grpc", layout::CELL_GRPC_PORT),
            pod::port("metrics", layout::METRICS_PORT),
        ]),
        readiness_probe: Some(pod::readiness(layout::CELL_GRPC_PORT)),
        liveness_probe: Some(pod::liveness(layout::CELL_GRPC_PORT)),
        resources: Some(pod::resources("500m", "256Mi", "2", "1Gi")),
        security_context: Some(pod::container_security()),
        volume_mounts: Some(vec![mount]),
        ..Container::default()
    };
    let stateful_set = StatefulSet {
        metadata: metadata.clone(),
        spec: StatefulSetSpec {
            service_name: Some(name.clone()),
            replicas: Some(i32::try_from(cell.servers.len()).unwrap_or(i32::MAX)),
            pod_management_policy: Some("Parallel".to_owned()),
            selector: pod::selector(&selector),
            template: pod::template(pod_labels, &selector, true, container, vec![volume]),
            ..StatefulSetSpec::default()
        },
        status: None,
    };
    let service = Service {
        metadata: metadata.clone(),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector.clone()),
            ports: Some(vec![pod::grpc_service_port(layout::CELL_GRPC_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    let budget = pod::one_at_a_time(metadata, &selector);
    CellObjects {
        stateful_set,
        service,
        budget,
    }
}
