//! The objects the whole fleet shares: its namespace, cells.yaml as a
//! ConfigMap, and the NetworkPolicy that lets only routers reach logic
//! servers.
//!
//! # The in-cluster cells.yaml
//!
//! It is the committed cells.yaml with two things rewritten, everything else
//! (regions, epochs, ranges, statuses, minting, degrade) as it is:
//! * each cell's `servers` become its StatefulSet pods' stable names, as many
//!   as the file lists ([`layout::server_address`]);
//! * each cell's `db` becomes its CloudNativePG cluster's read-write Service,
//!   same user and database, no password (pods add it from the Secret).
//!
//! The rewritten file is validated like any other before it is rendered, so
//! the ConfigMap never holds a topology a binary would refuse.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{ConfigMap, Namespace},
        networking::v1::{
            NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
            NetworkPolicySpec,
        },
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use redcell_topology::Topology;

use super::{Settings, database::Database, layout, pod};

pub fn namespace(settings: &Settings) -> Namespace {
    let mut labels = layout::object_labels(&layout::labels(&[(layout::NAME_LABEL, layout::APP)]));
    // Admission checks the Pod Security Standards: redcell's own pods meet
    // `restricted`; `baseline` is enforced because the namespace also holds
    // the operator's PostgreSQL pods, and `restricted` is warned and audited.
    for (mode, level) in [
        ("enforce", "baseline"),
        ("warn", "restricted"),
        ("audit", "restricted"),
    ] {
        labels.insert(
            format!("pod-security.kubernetes.io/{mode}"),
            level.to_owned(),
        );
    }
    Namespace {
        metadata: ObjectMeta {
            name: Some(settings.namespace.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// The topology as pods in `namespace` must see it.
pub fn in_cluster_topology(
    topology: &Topology,
    databases: &[Database],
    settings: &Settings,
) -> Result<Topology, Vec<String>> {
    let mut document = topology.document().clone();
    for (doc, database) in document.cells.iter_mut().zip(databases) {
        doc.servers = (0..doc.servers.len())
            .map(|ordinal| layout::server_address(&doc.name, ordinal, &settings.namespace))
            .collect();
        doc.db = database.dsn(&settings.namespace);
    }
    Topology::from_document(document).map_err(|errors| {
        errors
            .iter()
            .map(|error| format!("the in-cluster cells.yaml would be invalid: {error}"))
            .collect()
    })
}

pub fn topology_config_map(topology: &Topology, settings: &Settings) -> Result<ConfigMap, String> {
    let yaml = topology
        .to_yaml()
        .map_err(|errors| format!("cannot render cells.yaml: {errors}"))?;
    let text = format!(
        "# cells.yaml for namespace {}: rendered by `cellctl render k8s` (servers and db\n\
         # rewritten to the cluster's names). Edit the source cells.yaml, never this.\n{yaml}",
        settings.namespace
    );
    Ok(ConfigMap {
        metadata: ObjectMeta {
            name: Some(layout::TOPOLOGY_CONFIGMAP.to_owned()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(layout::object_labels(&layout::labels(&[(
                layout::NAME_LABEL,
                layout::APP,
            )]))),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(layout::TOPOLOGY_KEY.to_owned(), text)])),
        ..ConfigMap::default()
    })
}

/// The alert rules and the Grafana dashboard of `observability/` (compiled
/// in, so the committed k8s/ changes with them and the freshness test
/// notices): a ConfigMap of Prometheus rule files, to mount where
/// Prometheus reads `rule_files`, and one labelled `grafana_dashboard: "1"`,
/// which Grafana's dashboard sidecar (kube-prometheus-stack) imports.
pub fn observability_config_maps(settings: &Settings) -> [ConfigMap; 2] {
    let map = |name: &str, extra: &[(&str, &str)], key: &str, text: &str| {
        let mut labels = vec![(layout::NAME_LABEL, layout::APP)];
        labels.extend_from_slice(extra);
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(settings.namespace.clone()),
                labels: Some(layout::object_labels(&layout::labels(&labels))),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(key.to_owned(), text.to_owned())])),
            ..ConfigMap::default()
        }
    };
    [
        map(
            "redcell-alerts",
            &[],
            "redcell-alerts.yaml",
            include_str!("../../../../observability/alerts.yaml"),
        ),
        map(
            "redcell-dashboard",
            &[("grafana_dashboard", "1")],
            "redcell.json",
            include_str!("../../../../observability/dashboard.json"),
        ),
    ]
}

/// Logic servers' gRPC port admits routers only (DESIGN §6: cells serve
/// routers); the metrics port admits scrapers from any namespace.
pub fn logic_server_policy(settings: &Settings) -> NetworkPolicy {
    let port = |number: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(number)),
        protocol: Some("TCP".to_owned()),
        ..NetworkPolicyPort::default()
    };
    let selector = layout::all_logic_servers();
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some("logic-servers".to_owned()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(layout::object_labels(&selector)),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pod::selector(&selector)),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(pod::selector(&layout::all_routers())),
                        ..NetworkPolicyPeer::default()
                    }]),
                    ports: Some(vec![port(layout::CELL_GRPC_PORT)]),
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        namespace_selector: Some(LabelSelector::default()),
                        ..NetworkPolicyPeer::default()
                    }]),
                    ports: Some(vec![port(layout::METRICS_PORT)]),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}
