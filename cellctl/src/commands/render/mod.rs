//! `cellctl render k8s -o k8s/`: the fleet of a cells.yaml as Kubernetes
//! manifests (DESIGN §7, issue 13), each cell's order DB and the ledger run by
//! CloudNativePG.
//!
//! Built from typed objects: k8s-openapi for the built-in kinds, the
//! [`cnpg`] model for CloudNativePG's `Cluster`. The output is a pure function
//! of the topology and the flags (sorted maps, fixed file and document order,
//! no timestamps), so the committed k8s/ can be compared with a fresh render,
//! and rendering after an expansion adds the new cells' files and changes no
//! existing object except the cells.yaml ConfigMap (every name and every
//! shared object is independent of the list of cells, see [`layout`]).
//!
//! # Files
//!
//! | file | objects |
//! |---|---|
//! | `namespace.yaml` | the Namespace |
//! | `topology.yaml` | the in-cluster cells.yaml as a ConfigMap ([`fleet`]) |
//! | `observability.yaml` | ConfigMaps of the alert rules and the Grafana dashboard of `observability/` |
//! | `network-policy.yaml` | logic servers admit routers only |
//! | `routers.yaml` | per region: Deployment, Service, HPA, PDB ([`router`]) |
//! | `ledger.yaml` | the ledger DB's NetworkPolicy and migration Job |
//! | `cell-<name>.yaml` | StatefulSet, headless Service, PDB ([`cell`]); its DB's NetworkPolicy and migration Job ([`database`]) |
//! | `postgres/<cluster>.yaml` | CloudNativePG `Cluster`s, kept apart because Kubernetes' schemas do not know them |
//! | `kustomization.yaml` | every file above, for `kubectl apply -k` |
//!
//! Files in the output directory that an earlier render wrote (they start
//! with [`yaml::MARKER`]) and this one does not are removed; any other file
//! is left alone.

pub mod cnpg;

mod cell;
mod database;
mod fleet;
mod layout;
mod pod;
mod router;
mod yaml;

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use redcell_topology::Topology;
use serde::Serialize;

use crate::{CommandError, load};
use database::Database;
use yaml::Documents;

/// The namespace rendered into when `--namespace` is not given.
pub const DEFAULT_NAMESPACE: &str = "redcell";
/// The image rendered when `--image` is not given: the version being built,
/// from a registry the cluster's runtime already knows (override it with
/// `--image` or kustomize's `images:`).
pub const DEFAULT_IMAGE: &str = concat!("redcell:", env!("CARGO_PKG_VERSION"));
/// Where the CloudNativePG `Cluster`s go, inside the output directory.
pub const POSTGRES_DIR: &str = "postgres";

/// What to render.
#[derive(Debug, clap::Subcommand)]
pub enum Target {
    /// Kubernetes manifests: logic servers, routers, cells.yaml as a
    /// ConfigMap, NetworkPolicies, migration Jobs, and a CloudNativePG
    /// Cluster per cell DB and for the ledger.
    K8s(K8sArgs),
}

#[derive(Debug, clap::Args)]
pub struct K8sArgs {
    /// Namespace of every object (and of the DNS names in cells.yaml).
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Container image with the `cell`, `router` and `cellctl` binaries.
    #[arg(long, default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// StorageClass of the PostgreSQL volumes (default: the cluster's default
    /// StorageClass).
    #[arg(long)]
    pub storage_class: Option<String>,
    /// Directory to write the manifests to.
    #[arg(short = 'o', long = "output", default_value = "k8s")]
    pub output: PathBuf,
}

/// The flags every object depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub namespace: String,
    pub image: String,
    pub storage_class: Option<String>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            namespace: DEFAULT_NAMESPACE.to_owned(),
            image: DEFAULT_IMAGE.to_owned(),
            storage_class: None,
        }
    }
}

impl Settings {
    /// Every flag that Kubernetes would refuse, each naming its flag.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !is_dns_label(&self.namespace) {
            problems.push(format!(
                "--namespace {:?}: must be a DNS label (1-63 of a-z, 0-9, -; starting and ending with a letter or digit)",
                self.namespace
            ));
        }
        if self.image.is_empty() || self.image.contains(char::is_whitespace) {
            problems.push(format!(
                "--image {:?}: must be an image reference without spaces",
                self.image
            ));
        }
        if let Some(class) = &self.storage_class
            && !(class.len() <= 253 && class.split('.').all(is_dns_label))
        {
            problems.push(format!(
                "--storage-class {class:?}: must be a DNS subdomain (a-z, 0-9, -, .)"
            ));
        }
        problems
    }
}

/// A DNS label as Kubernetes names require (RFC 1123).
fn is_dns_label(name: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(|&b| alnum(b) || b == b'-')
        && bytes.first().copied().is_some_and(alnum)
        && bytes.last().copied().is_some_and(alnum)
}

/// One rendered file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Relative to the output directory, `/`-separated.
    pub path: String,
    pub text: String,
    /// The kinds of its documents, in order.
    pub kinds: Vec<String>,
}

fn manifest(path: String, documents: Documents) -> Manifest {
    let kinds = documents.kinds().to_vec();
    Manifest {
        path,
        text: documents.into_text(),
        kinds,
    }
}

/// Renders every manifest of `topology`, or every reason it cannot be.
pub fn render(topology: &Topology, settings: &Settings) -> Result<Vec<Manifest>, Vec<String>> {
    let mut problems = settings.problems();
    // Names become `cell-<name>`, `router-<name>`: Kubernetes names end with a
    // letter or digit, which cells.yaml does not require.
    for cell in topology.cells() {
        if cell.name.ends_with('-') {
            problems.push(format!(
                "cell {:?}: a name ending in '-' cannot name Kubernetes objects",
                cell.name
            ));
        }
    }
    for region in topology.regions() {
        if region.ends_with('-') {
            problems.push(format!(
                "region {region:?}: a name ending in '-' cannot name Kubernetes objects"
            ));
        }
    }
    let databases: Vec<Database> = topology
        .cells()
        .iter()
        .filter_map(|cell| {
            Database::of_cell(cell)
                .map_err(|problem| problems.push(problem))
                .ok()
        })
        .collect();
    if !problems.is_empty() {
        return Err(problems);
    }
    let in_cluster = fleet::in_cluster_topology(topology, &databases, settings)?;
    build(topology, &in_cluster, &databases, settings).map_err(|problem| vec![problem])
}

fn build(
    topology: &Topology,
    in_cluster: &Topology,
    databases: &[Database],
    settings: &Settings,
) -> Result<Vec<Manifest>, String> {
    let mut manifests = Vec::new();
    let mut clusters = Vec::new();

    let mut namespace = Documents::new("The namespace of the fleet.");
    add(&mut namespace, &fleet::namespace(settings))?;
    manifests.push(manifest("namespace.yaml".into(), namespace));

    let mut config = Documents::new(
        "cells.yaml as the pods see it; they reload it when it changes (no restart).",
    );
    add(
        &mut config,
        &fleet::topology_config_map(in_cluster, settings)?,
    )?;
    manifests.push(manifest("topology.yaml".into(), config));

    let mut observability = Documents::new(
        "Alert rules and the Grafana dashboard of observability/ (see README: metrics).",
    );
    for map in fleet::observability_config_maps(settings) {
        add(&mut observability, &map)?;
    }
    manifests.push(manifest("observability.yaml".into(), observability));

    let mut network = Documents::new("Logic servers' gRPC port admits routers only.");
    add(&mut network, &fleet::logic_server_policy(settings))?;
    manifests.push(manifest("network-policy.yaml".into(), network));

    let mut routers = Documents::new("Per region: the routers, their Service and autoscaler.");
    for region in topology.regions() {
        let objects = router::render(region, settings);
        add(&mut routers, &objects.deployment)?;
        add(&mut routers, &objects.service)?;
        add(&mut routers, &objects.autoscaler)?;
        add(&mut routers, &objects.budget)?;
    }
    manifests.push(manifest("routers.yaml".into(), routers));

    let ledger = Database::ledger();
    let mut ledger_file = Documents::new(
        "The ledger's clients (every logic server) and its migration Job; \
         its Cluster is in postgres/.",
    );
    add(&mut ledger_file, &ledger.network_policy(settings))?;
    add(&mut ledger_file, &ledger.migrate_job(settings))?;
    manifests.push(manifest("ledger.yaml".into(), ledger_file));
    clusters.push(&ledger);

    for (cell, database) in topology.cells().iter().zip(databases) {
        let objects = cell::render(topology, cell, database, settings);
        let mut file = Documents::new(&format!(
            "Cell {}: its logic servers, their headless Service and disruption budget, \
             its order DB's clients and migration Job; the DB's Cluster is in postgres/.",
            cell.name
        ));
        add(&mut file, &objects.stateful_set)?;
        add(&mut file, &objects.service)?;
        add(&mut file, &objects.budget)?;
        add(&mut file, &database.network_policy(settings))?;
        add(&mut file, &database.migrate_job(settings))?;
        manifests.push(manifest(format!("cell-{}.yaml", cell.name), file));
        clusters.push(database);
    }

    for database in clusters {
        let mut file = Documents::new(&format!(
            "The CloudNativePG Cluster of {} (postgresql.cnpg.io/v1, operator 1.28 or later).",
            database.about
        ));
        file.push("Cluster", &database.cluster(settings))?;
        manifests.push(manifest(
            format!("{POSTGRES_DIR}/{}.yaml", database.cluster),
            file,
        ));
    }

    manifests.push(kustomization(&manifests)?);
    Ok(manifests)
}

fn add<T: k8s_openapi::Resource + Serialize>(
    documents: &mut Documents,
    object: &T,
) -> Result<(), String> {
    documents.push(T::KIND, object)
}

/// `kustomization.yaml`: every file, in render order (namespace first).
fn kustomization(manifests: &[Manifest]) -> Result<Manifest, String> {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Kustomization<'a> {
        api_version: &'a str,
        kind: &'a str,
        resources: Vec<&'a str>,
    }
    let kustomization = Kustomization {
        api_version: "kustomize.config.k8s.io/v1beta1",
        kind: "Kustomization",
        resources: manifests.iter().map(|m| m.path.as_str()).collect(),
    };
    let text = yaml::to_text("kustomization.yaml", &kustomization)?;
    Ok(Manifest {
        path: "kustomization.yaml".into(),
        text: format!(
            "{}\n# Do not edit: change cells.yaml (or the flags) and render again.\n# `kubectl apply -k` on this directory applies every file.\n{text}",
            yaml::MARKER
        ),
        kinds: vec!["Kustomization".into()],
    })
}

/// `cellctl render TARGET`.
pub fn run(topology_path: &Path, target: Target, out: &mut impl Write) -> Result<(), CommandError> {
    let Target::K8s(args) = target;
    let topology = load::topology(topology_path)?;
    let settings = Settings {
        namespace: args.namespace,
        image: args.image,
        storage_class: args.storage_class,
    };
    let manifests = render(&topology, &settings).map_err(|problems| {
        CommandError::Input(format!(
            "cannot render {}:\n  {}",
            topology_path.display(),
            problems.join("\n  ")
        ))
    })?;
    write(&args.output, &manifests, out)?;
    Ok(())
}

/// Writes the manifests under `dir`, saying for each whether it changed, and
/// removes earlier renders' files that are no longer rendered.
fn write(dir: &Path, manifests: &[Manifest], out: &mut impl Write) -> Result<(), CommandError> {
    let cannot = |what: &str, path: &Path, error: std::io::Error| {
        CommandError::Input(format!("cannot {what} {}: {error}", path.display()))
    };
    let mut changed = 0;
    for manifest in manifests {
        let path = dir.join(&manifest.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| cannot("create", parent, e))?;
        }
        let same = std::fs::read_to_string(&path).is_ok_and(|text| text == manifest.text);
        if !same {
            // Written aside and renamed: a reader never sees half a file.
            let temporary = path.with_extension("yaml.tmp");
            std::fs::write(&temporary, &manifest.text)
                .map_err(|e| cannot("write", &temporary, e))?;
            std::fs::rename(&temporary, &path).map_err(|e| cannot("write", &path, e))?;
            changed += 1;
        }
        writeln!(
            out,
            "  {:<9} {:<28} {}",
            if same { "unchanged" } else { "written" },
            manifest.path,
            manifest.kinds.join(", ")
        )?;
    }
    let mut removed = 0;
    for stale in stale_files(dir, manifests) {
        std::fs::remove_file(&stale).map_err(|e| cannot("remove", &stale, e))?;
        writeln!(out, "  {:<9} {}", "removed", stale.display())?;
        removed += 1;
    }
    writeln!(
        out,
        "{}: {} files, {changed} written, {removed} removed",
        dir.display(),
        manifests.len()
    )?;
    Ok(())
}

/// Files under `dir` (and its postgres/) that start with the render marker
/// and are not among `manifests`.
fn stale_files(dir: &Path, manifests: &[Manifest]) -> Vec<PathBuf> {
    let rendered: Vec<PathBuf> = manifests.iter().map(|m| dir.join(&m.path)).collect();
    let mut stale = Vec::new();
    for folder in [dir.to_path_buf(), dir.join(POSTGRES_DIR)] {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
            .filter(|path| !rendered.contains(path))
            .filter(|path| {
                std::fs::read_to_string(path)
                    .is_ok_and(|text| text.lines().next() == Some(yaml::MARKER))
            })
            .collect();
        paths.sort();
        stale.extend(paths);
    }
    stale
}
