//! A typed model of CloudNativePG's `Cluster` (`postgresql.cnpg.io/v1`): the
//! part of it redcell renders, field for field as the operator's API reference
//! names it.
//!
//! **Follows CloudNativePG v1.30.0** (`api/v1/cluster_types.go` at tag
//! `v1.30.0`, published as docs/src/cloudnative-pg.v1.md). The manifests need
//! an operator of **1.28 or later**: `postgresql.synchronous.failoverQuorum`
//! graduated into the spec in 1.28 (before, an `alpha.cnpg.io/failoverQuorum`
//! annotation); `synchronous` itself with `dataDurability` dates from 1.25.
//!
//! Kubernetes' own schemas (`kubernetes-validate`) know no custom resources, so
//! this model is the check of the rendered `Cluster`s: every struct denies
//! unknown fields and every enumeration is a Rust enum, so reading a rendered
//! file back with [`Cluster::from_yaml`] fails on a misspelled field or an
//! invalid value. Where CloudNativePG embeds a core Kubernetes type
//! (`corev1.TopologySpreadConstraint`, `corev1.ResourceRequirements`,
//! `metav1.ObjectMeta`), the model uses k8s-openapi's.
//!
//! Only fields redcell sets are modelled; a field added here must be looked up
//! in the reference of the version named above, never guessed.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{ResourceRequirements, TopologySpreadConstraint},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde::{Deserialize, Serialize};

/// `apiVersion: postgresql.cnpg.io/v1`, and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiVersion {
    #[serde(rename = "postgresql.cnpg.io/v1")]
    V1,
}

/// `kind: Cluster`, and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Cluster,
}

/// A PostgreSQL cluster managed by the operator: one primary and streaming
/// standbys, with a `<name>-rw` Service that follows the primary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cluster {
    pub api_version: ApiVersion,
    pub kind: Kind,
    pub metadata: ObjectMeta,
    pub spec: ClusterSpec,
}

impl Cluster {
    /// Reads one rendered `Cluster` back, refusing anything the model does not
    /// know (the typed check of the committed manifests).
    pub fn from_yaml(text: &str) -> Result<Cluster, String> {
        super::yaml::from_text(text)
    }
}

/// `ClusterSpec`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Labels and annotations the operator copies to every object it makes
    /// for the cluster (pods, Services, PVCs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inherited_metadata: Option<EmbeddedObjectMetadata>,
    /// PostgreSQL image; the operator's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    /// Number of instances (primary included).
    pub instances: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgresql: Option<PostgresConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<AffinityConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_update_strategy: Option<PrimaryUpdateStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_update_method: Option<PrimaryUpdateMethod>,
    /// The operator's own PodDisruptionBudgets (default true).
    #[serde(default, rename = "enablePDB", skip_serializing_if = "Option::is_none")]
    pub enable_pdb: Option<bool>,
}

/// `EmbeddedObjectMetadata`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmbeddedObjectMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `PostgresConfiguration` (`spec.postgresql`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostgresConfiguration {
    /// postgresql.conf options.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous: Option<SynchronousReplicaConfiguration>,
}

/// `SynchronousReplicaConfiguration` (`spec.postgresql.synchronous`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SynchronousReplicaConfiguration {
    pub method: SynchronousMethod,
    /// Standbys a commit waits for; more than zero.
    pub number: std::num::NonZeroU32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_durability: Option<DataDurability>,
    /// Promote only a standby proven to hold every synchronously committed
    /// transaction (`R + W > N`), else wait.
    #[serde(default)]
    pub failover_quorum: bool,
}

/// `any` (quorum) or `first` (priority).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SynchronousMethod {
    Any,
    First,
}

/// `required`: writes block without enough healthy standbys; `preferred`:
/// the requirement shrinks with the standbys available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataDurability {
    Required,
    Preferred,
}

/// `BootstrapConfiguration` (`spec.bootstrap`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootstrapConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initdb: Option<BootstrapInitDb>,
}

/// `BootstrapInitDB` (`spec.bootstrap.initdb`): a new, empty cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootstrapInitDb {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// A `kubernetes.io/basic-auth` Secret whose `username` is the owner and
    /// whose `password` becomes the owner's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_checksums: Option<bool>,
}

/// `LocalObjectReference`: an object of the same namespace, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalObjectReference {
    pub name: String,
}

/// `StorageConfiguration` (`spec.storage`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageConfiguration {
    /// The StorageClass of the PVCs; the cluster's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize_in_use_volumes: Option<bool>,
}

/// `AffinityConfiguration` (`spec.affinity`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AffinityConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_pod_anti_affinity: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_anti_affinity_type: Option<PodAntiAffinityType>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodAntiAffinityType {
    Preferred,
    Required,
}

/// When the primary is updated: by the operator on its own, or when told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrimaryUpdateStrategy {
    Unsupervised,
    Supervised,
}

/// How the primary is updated: a switchover to an updated standby, or a
/// restart in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrimaryUpdateMethod {
    Switchover,
    Restart,
}
