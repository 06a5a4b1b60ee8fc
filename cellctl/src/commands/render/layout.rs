//! The fleet's names, labels and ports inside a Kubernetes namespace: the one
//! home of every name two manifests must agree on (a Service and the DNS
//! names in cells.yaml, a NetworkPolicy and the labels of the pods it lets
//! in, a Secret and the env of the pods that read it).
//!
//! Every name is a function of a cell or region name (a DNS label by
//! `cellctl validate`: `[a-z][a-z0-9-]*`, at most 32 characters), never of
//! the rest of the topology, so rendering after an expansion leaves the
//! names of existing objects unchanged.

use std::collections::BTreeMap;

/// gRPC port of every logic server in the cluster (one per pod, so all equal).
pub const CELL_GRPC_PORT: i32 = 7100;
/// gRPC port of every router.
pub const ROUTER_GRPC_PORT: i32 = 7000;
/// The admin port that serves Prometheus `/metrics` (issue 14's
/// `--admin-listen`): annotated and declared now, so scraping starts when
/// the binaries serve it.
pub const METRICS_PORT: i32 = 9090;
/// PostgreSQL, as CloudNativePG's `-rw` Services expose it.
pub const POSTGRES_PORT: i32 = 5432;
/// CloudNativePG's instance manager (status, probes): the operator and the
/// other instances of the cluster call it.
pub const CNPG_STATUS_PORT: i32 = 8000;
/// CloudNativePG's PostgreSQL exporter on every instance.
pub const CNPG_METRICS_PORT: i32 = 9187;
/// Where CloudNativePG's operator runs (its default install).
pub const CNPG_OPERATOR_NAMESPACE: &str = "cnpg-system";

/// The ConfigMap holding the in-cluster cells.yaml, and where pods see it.
pub const TOPOLOGY_CONFIGMAP: &str = "redcell-topology";
pub const TOPOLOGY_KEY: &str = "cells.yaml";
pub const TOPOLOGY_DIR: &str = "/etc/redcell/topology";
/// The Secret with the credential routers present to cells (key `token`).
pub const INTERNAL_TOKEN_SECRET: &str = "redcell-internal-token";
/// The Secret with the RS256 public key routers verify tokens with.
pub const JWT_SECRET: &str = "redcell-jwt";
pub const JWT_KEY: &str = "public.pem";
pub const JWT_DIR: &str = "/etc/redcell/jwt";

/// The ledger's CloudNativePG cluster, its database and owner.
pub const LEDGER_CLUSTER: &str = "ledger-db";
pub const LEDGER_DATABASE: &str = "ledger";
pub const LEDGER_OWNER: &str = "redcell";

/// The uid and gid of distroless's `nonroot` user (the image's `USER`).
pub const NONROOT_ID: i64 = 65532;

/// Label keys. `app.kubernetes.io/*` are Kubernetes' recommended labels; the
/// `redcell.io/*` ones select a cell's or region's pods.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const CELL_LABEL: &str = "redcell.io/cell";
pub const REGION_LABEL: &str = "redcell.io/region";
/// On migration Jobs' pods: the CloudNativePG cluster the Job migrates.
pub const DATABASE_LABEL: &str = "redcell.io/database";
/// CloudNativePG's own label on every pod of a cluster.
pub const CNPG_CLUSTER_LABEL: &str = "cnpg.io/cluster";
/// CloudNativePG's label value for PostgreSQL instances (not Jobs).
pub const CNPG_POD_ROLE_LABEL: &str = "cnpg.io/podRole";

pub const APP: &str = "redcell";
pub const LOGIC_SERVER: &str = "logic-server";
pub const ROUTER: &str = "router";
pub const MIGRATE: &str = "migrate";
pub const DATABASE: &str = "database";

/// The StatefulSet, headless Service and PodDisruptionBudget of a cell.
pub fn cell_workload(cell: &str) -> String {
    format!("cell-{cell}")
}

/// The CloudNativePG cluster of a cell's order DB.
pub fn cell_cluster(cell: &str) -> String {
    format!("cell-{cell}-db")
}

/// The `kubernetes.io/basic-auth` Secret a cluster's owner is bootstrapped
/// with and the pods read the password from (made by the operator of the
/// fleet, never rendered: secrets are not committed).
pub fn credentials_secret(cluster: &str) -> String {
    format!("{cluster}-credentials")
}

/// The host of a cluster's read-write Service (CloudNativePG's `-rw`, which
/// follows the primary through failovers).
pub fn primary_host(cluster: &str, namespace: &str) -> String {
    format!("{cluster}-rw.{namespace}.svc")
}

/// The address of a cell's `ordinal`th logic server: the StatefulSet pod's
/// name under the headless Service, stable across restarts and reschedules.
pub fn server_address(cell: &str, ordinal: usize, namespace: &str) -> String {
    let workload = cell_workload(cell);
    format!("{workload}-{ordinal}.{workload}.{namespace}.svc:{CELL_GRPC_PORT}")
}

/// The Deployment, Service, autoscaler and disruption budget of a region's
/// routers.
pub fn router_workload(region: &str) -> String {
    format!("router-{region}")
}

/// The Job that migrates a cluster's database.
pub fn migrate_job(cluster: &str) -> String {
    format!("migrate-{cluster}")
}

/// The NetworkPolicy guarding a cluster's pods.
pub fn database_policy(cluster: &str) -> String {
    format!("{cluster}-clients")
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect()
}

/// The selector of a cell's logic servers.
pub fn cell_selector(cell: &str) -> BTreeMap<String, String> {
    labels(&[
        (NAME_LABEL, APP),
        (COMPONENT_LABEL, LOGIC_SERVER),
        (CELL_LABEL, cell),
    ])
}

/// The selector of a region's routers.
pub fn router_selector(region: &str) -> BTreeMap<String, String> {
    labels(&[
        (NAME_LABEL, APP),
        (COMPONENT_LABEL, ROUTER),
        (REGION_LABEL, region),
    ])
}

/// The selector of every logic server of every cell.
pub fn all_logic_servers() -> BTreeMap<String, String> {
    labels(&[(NAME_LABEL, APP), (COMPONENT_LABEL, LOGIC_SERVER)])
}

/// The selector of every router of every region.
pub fn all_routers() -> BTreeMap<String, String> {
    labels(&[(NAME_LABEL, APP), (COMPONENT_LABEL, ROUTER)])
}

/// The selector of the migration Job's pods of a cluster.
pub fn migrate_selector(cluster: &str) -> BTreeMap<String, String> {
    labels(&[
        (NAME_LABEL, APP),
        (COMPONENT_LABEL, MIGRATE),
        (DATABASE_LABEL, cluster),
    ])
}

/// The metadata labels of an object: its pods' selector plus who made it.
pub fn object_labels(selector: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut labels = selector.clone();
    labels.insert(MANAGED_BY_LABEL.to_owned(), "cellctl".to_owned());
    labels
}
