//! A PostgreSQL database of the fleet on Kubernetes (a cell's order DB, or the
//! ledger): its CloudNativePG `Cluster`, the NetworkPolicy that lets only its
//! clients in, and the Job that migrates it.
//!
//! # Why the cluster is configured as it is
//!
//! * **Synchronous replication, quorum of one, required**
//!   (`synchronous: {method: any, number: 1, dataDurability: required}`): a
//!   commit returns only once one of the two standbys has the WAL, and with
//!   no healthy standby writes wait rather than commit on the primary alone.
//!   A lane's version check and the ledger's idempotency keys assume that a
//!   committed claim or debit survives a failover.
//! * **`failoverQuorum: true`**: the operator promotes a standby only when it
//!   can prove that standby holds every synchronously committed transaction
//!   (with the primary and the one standby that acknowledged lost together,
//!   the third instance may be behind: then it waits instead of losing data).
//! * **3 instances over zones and nodes**: required anti-affinity on
//!   `kubernetes.io/hostname`, and a zone spread that refuses to crowd a zone.
//! * **Credentials** from a `kubernetes.io/basic-auth` Secret
//!   (`bootstrap.initdb.secret`) that the operator of the fleet creates; it is
//!   never rendered, so no password is committed.
//! * **Fixed `max_connections`**, not derived from the topology, so that an
//!   expansion leaves existing clusters unchanged.
//!
//! The clients are selected by labels ([`layout`]): a cell's DB admits that
//! cell's logic servers and its migration Job; the ledger admits every logic
//! server and its own Job. Both admit their own instances (replication, the
//! instance manager) and the CloudNativePG operator, on the ports its
//! documentation lists (5432, 8000), and the exporter port 9187 to scrapers.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        batch::v1::{Job, JobSpec},
        core::v1::{Container, PodSpec, PodTemplateSpec},
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
use redcell_topology::Cell;

use super::{
    Settings,
    cnpg::{
        AffinityConfiguration, ApiVersion, BootstrapConfiguration, BootstrapInitDb, Cluster,
        ClusterSpec, DataDurability, EmbeddedObjectMetadata, Kind, LocalObjectReference,
        PodAntiAffinityType, PostgresConfiguration, PrimaryUpdateMethod, PrimaryUpdateStrategy,
        StorageConfiguration, SynchronousMethod, SynchronousReplicaConfiguration,
    },
    layout, pod,
};

/// Instances per cluster: a primary and two standbys, one per zone.
pub const INSTANCES: u32 = 3;

/// One database and who may reach it.
#[derive(Debug, Clone)]
pub struct Database {
    /// The CloudNativePG cluster's name.
    pub cluster: String,
    /// What it is, for descriptions (`order DB of cell n1`, `the ledger`).
    pub about: String,
    pub database: String,
    pub owner: String,
    /// Selectors of the pods that use it (besides its migration Job).
    pub clients: Vec<BTreeMap<String, String>>,
    /// `cellctl migrate` arguments before `--dsn`.
    pub migrate: Vec<String>,
    pub size: &'static str,
    pub max_connections: &'static str,
}

impl Database {
    /// A cell's order DB: database and owner from the cell's DSN in
    /// cells.yaml, so the in-cluster DSN names the same database and user.
    pub fn of_cell(cell: &Cell) -> Result<Database, String> {
        let config: tokio_postgres::Config = cell
            .db
            .parse()
            .map_err(|error| format!("cell {}: db: {error}", cell.name))?;
        let missing = |what: &str| format!("cell {}: db: the DSN names no {what}", cell.name);
        let owner = config.get_user().ok_or_else(|| missing("user"))?;
        let database = config.get_dbname().ok_or_else(|| missing("database"))?;
        Ok(Database {
            cluster: layout::cell_cluster(&cell.name),
            about: format!("the order DB of cell {}", cell.name),
            database: database.to_owned(),
            owner: owner.to_owned(),
            clients: vec![layout::cell_selector(&cell.name)],
            migrate: vec!["migrate".into(), "--cell".into(), cell.name.clone()],
            size: "20Gi",
            max_connections: "200",
        })
    }

    /// The ledger: every logic server debits and credits it.
    pub fn ledger() -> Database {
        Database {
            cluster: layout::LEDGER_CLUSTER.to_owned(),
            about: "the ledger".to_owned(),
            database: layout::LEDGER_DATABASE.to_owned(),
            owner: layout::LEDGER_OWNER.to_owned(),
            clients: vec![layout::all_logic_servers()],
            migrate: vec!["migrate".into(), "--ledger".into()],
            size: "50Gi",
            max_connections: "500",
        }
    }

    /// The DSN cells.yaml names in the cluster (no password: the pods add it
    /// from the Secret, see [`pod::dsn_env`]).
    pub fn dsn(&self, namespace: &str) -> String {
        format!(
            "postgres://{}@{}:{}/{}",
            self.owner,
            layout::primary_host(&self.cluster, namespace),
            layout::POSTGRES_PORT,
            self.database
        )
    }

    /// `DB_PASSWORD` and `DSN_VAR`: the env of a pod connecting as the owner.
    pub fn env(
        &self,
        dsn_var: &str,
        password_var: &str,
        namespace: &str,
    ) -> [k8s_openapi::api::core::v1::EnvVar; 2] {
        pod::dsn_env(
            dsn_var,
            password_var,
            &self.cluster,
            &self.owner,
            &self.database,
            namespace,
        )
    }

    fn metadata(&self, name: String, settings: &Settings) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(settings.namespace.clone()),
            labels: Some(layout::object_labels(&self.labels())),
            ..ObjectMeta::default()
        }
    }

    fn labels(&self) -> BTreeMap<String, String> {
        layout::labels(&[
            (layout::NAME_LABEL, layout::APP),
            (layout::COMPONENT_LABEL, layout::DATABASE),
            (layout::DATABASE_LABEL, &self.cluster),
        ])
    }

    fn instances(&self) -> BTreeMap<String, String> {
        layout::labels(&[
            (layout::CNPG_CLUSTER_LABEL, &self.cluster),
            (layout::CNPG_POD_ROLE_LABEL, "instance"),
        ])
    }

    pub fn cluster(&self, settings: &Settings) -> Cluster {
        let instances = self.instances();
        let mut spread = pod::spread(&instances, true);
        spread.truncate(1); // nodes: the required anti-affinity below
        Cluster {
            api_version: ApiVersion::V1,
            kind: Kind::Cluster,
            metadata: self.metadata(self.cluster.clone(), settings),
            spec: ClusterSpec {
                description: Some(format!("redcell: {}", self.about)),
                inherited_metadata: Some(EmbeddedObjectMetadata {
                    labels: self.labels(),
                    annotations: BTreeMap::new(),
                }),
                image_name: None,
                instances: INSTANCES,
                postgresql: Some(PostgresConfiguration {
                    parameters: BTreeMap::from([(
                        "max_connections".to_owned(),
                        self.max_connections.to_owned(),
                    )]),
                    synchronous: Some(SynchronousReplicaConfiguration {
                        method: SynchronousMethod::Any,
                        number: std::num::NonZeroU32::MIN,
                        data_durability: Some(DataDurability::Required),
                        failover_quorum: true,
                    }),
                }),
                bootstrap: Some(BootstrapConfiguration {
                    initdb: Some(BootstrapInitDb {
                        database: Some(self.database.clone()),
                        owner: Some(self.owner.clone()),
                        secret: Some(LocalObjectReference {
                            name: layout::credentials_secret(&self.cluster),
                        }),
                        encoding: Some("UTF8".to_owned()),
                        data_checksums: Some(true),
                    }),
                }),
                storage: Some(StorageConfiguration {
                    storage_class: settings.storage_class.clone(),
                    size: Some(self.size.to_owned()),
                    resize_in_use_volumes: None,
                }),
                affinity: Some(AffinityConfiguration {
                    enable_pod_anti_affinity: Some(true),
                    topology_key: Some("kubernetes.io/hostname".to_owned()),
                    pod_anti_affinity_type: Some(PodAntiAffinityType::Required),
                }),
                topology_spread_constraints: Some(spread),
                resources: Some(pod::resources("1", "2Gi", "2", "2Gi")),
                primary_update_strategy: Some(PrimaryUpdateStrategy::Unsupervised),
                primary_update_method: Some(PrimaryUpdateMethod::Switchover),
                enable_pdb: None,
            },
        }
    }

    /// Ingress to the cluster's pods: its clients and migration Job on 5432,
    /// its own instances and the operator on 5432 and 8000, scrapers on 9187.
    pub fn network_policy(&self, settings: &Settings) -> NetworkPolicy {
        let pods = |labels: &BTreeMap<String, String>| NetworkPolicyPeer {
            pod_selector: Some(pod::selector(labels)),
            ..NetworkPolicyPeer::default()
        };
        let ports = |numbers: &[i32]| {
            numbers
                .iter()
                .map(|number| NetworkPolicyPort {
                    port: Some(IntOrString::Int(*number)),
                    protocol: Some("TCP".to_owned()),
                    ..NetworkPolicyPort::default()
                })
                .collect::<Vec<_>>()
        };
        let mut clients: Vec<_> = self.clients.iter().map(pods).collect();
        clients.push(pods(&layout::migrate_selector(&self.cluster)));
        let operator = NetworkPolicyPeer {
            namespace_selector: Some(pod::selector(&layout::labels(&[(
                "kubernetes.io/metadata.name",
                layout::CNPG_OPERATOR_NAMESPACE,
            )]))),
            pod_selector: Some(pod::selector(&layout::labels(&[(
                layout::NAME_LABEL,
                "cloudnative-pg",
            )]))),
            ..NetworkPolicyPeer::default()
        };
        let anywhere = NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector::default()),
            ..NetworkPolicyPeer::default()
        };
        let own = layout::labels(&[(layout::CNPG_CLUSTER_LABEL, &self.cluster)]);
        let rule = |from: Vec<NetworkPolicyPeer>, numbers: &[i32]| NetworkPolicyIngressRule {
            from: Some(from),
            ports: Some(ports(numbers)),
        };
        NetworkPolicy {
            metadata: self.metadata(layout::database_policy(&self.cluster), settings),
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(pod::selector(&own)),
                policy_types: Some(vec!["Ingress".to_owned()]),
                ingress: Some(vec![
                    rule(clients, &[layout::POSTGRES_PORT]),
                    rule(
                        vec![pods(&own), operator],
                        &[layout::POSTGRES_PORT, layout::CNPG_STATUS_PORT],
                    ),
                    rule(vec![anywhere], &[layout::CNPG_METRICS_PORT]),
                ]),
                ..NetworkPolicySpec::default()
            }),
        }
    }

    /// `cellctl migrate ... --dsn $(DSN)`, retried until the cluster is up
    /// (a new cluster takes minutes to bootstrap), removed an hour after it
    /// finished so that the next `kubectl apply` runs it again (migrations
    /// are idempotent) with the image it names then.
    pub fn migrate_job(&self, settings: &Settings) -> Job {
        let selector = layout::migrate_selector(&self.cluster);
        let mut env = vec![pod::topology_env()];
        env.extend(self.env("DSN", "DB_PASSWORD", &settings.namespace));
        let (volume, mount) = pod::topology_volume();
        let mut args = self.migrate.clone();
        args.extend(["--dsn".to_owned(), "$(DSN)".to_owned()]);
        Job {
            metadata: ObjectMeta {
                labels: Some(layout::object_labels(&selector)),
                ..self.metadata(layout::migrate_job(&self.cluster), settings)
            },
            spec: Some(JobSpec {
                backoff_limit: Some(10),
                ttl_seconds_after_finished: Some(3600),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(selector),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        restart_policy: Some("OnFailure".to_owned()),
                        automount_service_account_token: Some(false),
                        enable_service_links: Some(false),
                        security_context: Some(pod::pod_security()),
                        containers: vec![Container {
                            name: "migrate".to_owned(),
                            image: Some(settings.image.clone()),
                            image_pull_policy: Some("IfNotPresent".to_owned()),
                            command: Some(vec!["/usr/local/bin/cellctl".to_owned()]),
                            args: Some(args),
                            env: Some(env),
                            resources: Some(pod::resources("100m", "64Mi", "500m", "128Mi")),
                            security_context: Some(pod::container_security()),
                            volume_mounts: Some(vec![mount]),
                            ..Container::default()
                        }],
                        volumes: Some(vec![volume]),
                        ..PodSpec::default()
                    }),
                },
                ..JobSpec::default()
            }),
            status: None,
        }
    }
}
