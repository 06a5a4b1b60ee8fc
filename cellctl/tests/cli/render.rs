//! `cellctl render k8s` (issue 13): the committed k8s/ is a fresh render of the
//! committed cells.yaml, its CloudNativePG `Cluster`s read back through the
//! typed model (which refuses unknown fields), and an expansion adds the new
//! cell's objects while changing no existing one but the cells.yaml ConfigMap.
//! Kubernetes' own schemas check the built-in kinds in `.ci/run`
//! (`kubernetes-validate --strict`).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use redcell_cellctl::render::{
    self, Settings,
    cnpg::{Cluster, DataDurability, SynchronousMethod},
};
use redcell_topology::{
    Topology,
    plan::{self, NewCell, Split},
};
use serde::Deserialize;

use super::{bundled, cellctl};

fn committed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../k8s")
}

fn bundled_topology() -> Topology {
    Topology::parse(&std::fs::read_to_string(bundled()).unwrap()).unwrap()
}

/// Every file under `dir`, by path relative to it.
fn files(dir: &Path) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else {
                let relative = path.strip_prefix(dir).unwrap().to_str().unwrap().to_owned();
                found.insert(relative, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    found
}

/// Every object of a render, by `Kind/name`.
fn objects(manifests: &[render::Manifest]) -> BTreeMap<String, serde_yaml::Value> {
    let mut found = BTreeMap::new();
    for manifest in manifests.iter().filter(|m| m.path != "kustomization.yaml") {
        for document in serde_yaml::Deserializer::from_str(&manifest.text) {
            let value = serde_yaml::Value::deserialize(document).unwrap();
            let key = format!(
                "{}/{}",
                value["kind"].as_str().unwrap(),
                value["metadata"]["name"].as_str().unwrap()
            );
            assert!(found.insert(key.clone(), value).is_none(), "{key} twice");
        }
    }
    found
}

#[test]
fn committed_k8s_equals_a_fresh_render_of_the_committed_cells_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let bundled = bundled();
    let out = cellctl(
        &[
            "--topology",
            bundled.to_str().unwrap(),
            "render",
            "k8s",
            "-o",
            dir.path().to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let fresh = files(dir.path());
    let committed = files(&committed());
    let stale = "k8s/ differs from a fresh render of cells.yaml: run \
                 `cargo run -p redcell-cellctl -- render k8s -o k8s/` and commit k8s/";
    assert_eq!(
        fresh.keys().collect::<Vec<_>>(),
        committed.keys().collect::<Vec<_>>(),
        "{stale}"
    );
    for (path, text) in &fresh {
        assert!(
            committed[path] == *text,
            "{stale} (first difference: {path})"
        );
    }
    assert!(
        out.stdout.ends_with(&format!(
            "{}: {count} files, {count} written, 0 removed\n",
            dir.path().display(),
            count = fresh.len()
        )),
        "{}",
        out.stdout
    );
}

/// The typed check of the custom resources: every committed `Cluster` reads
/// back through the model with `deny_unknown_fields`, and says what the
/// fleet relies on (three instances, synchronous replication that blocks
/// rather than loses a commit, a quorum before failover, its credentials
/// Secret). One per cell and one for the ledger, each named by the DSN the
/// in-cluster cells.yaml gives its cell.
#[test]
fn committed_clusters_follow_the_cloudnativepg_model() {
    let topology = bundled_topology();
    let committed = files(&committed());
    let clusters: BTreeMap<String, Cluster> = committed
        .iter()
        .filter(|(path, _)| path.starts_with("postgres/"))
        .map(|(path, text)| {
            let cluster = Cluster::from_yaml(text).unwrap_or_else(|e| panic!("{path}: {e}"));
            (cluster.metadata.name.clone().unwrap(), cluster)
        })
        .collect();
    let mut expected: Vec<String> = topology
        .cells()
        .iter()
        .map(|cell| format!("cell-{}-db", cell.name))
        .collect();
    expected.push("ledger-db".to_owned());
    expected.sort();
    assert_eq!(clusters.keys().cloned().collect::<Vec<_>>(), expected);

    for (name, cluster) in &clusters {
        let spec = &cluster.spec;
        assert_eq!(spec.instances, 3, "{name}");
        let synchronous = spec
            .postgresql
            .as_ref()
            .and_then(|p| p.synchronous.as_ref())
            .unwrap_or_else(|| panic!("{name}: no synchronous replication"));
        assert_eq!(synchronous.method, SynchronousMethod::Any, "{name}");
        assert_eq!(synchronous.number.get(), 1, "{name}");
        assert_eq!(
            synchronous.data_durability,
            Some(DataDurability::Required),
            "{name}"
        );
        assert!(synchronous.failover_quorum, "{name}");
        let initdb = spec.bootstrap.as_ref().unwrap().initdb.as_ref().unwrap();
        assert_eq!(
            initdb.secret.as_ref().unwrap().name,
            format!("{name}-credentials")
        );
        assert!(spec.storage.as_ref().unwrap().size.is_some(), "{name}");
        let spread = spec.topology_spread_constraints.as_ref().unwrap();
        assert_eq!(spread[0].topology_key, "topology.kubernetes.io/zone");
        assert_eq!(spread[0].when_unsatisfiable, "DoNotSchedule");
    }

    // The in-cluster cells.yaml names each cell's cluster, and is valid.
    let config: serde_yaml::Value = serde_yaml::from_str(&committed["topology.yaml"]).unwrap();
    let in_cluster = Topology::parse(config["data"]["cells.yaml"].as_str().unwrap()).unwrap();
    for cell in in_cluster.cells() {
        let initdb = clusters[&format!("cell-{}-db", cell.name)]
            .spec
            .bootstrap
            .as_ref()
            .unwrap()
            .initdb
            .clone()
            .unwrap();
        assert_eq!(
            cell.db,
            format!(
                "postgres://{}@cell-{}-db-rw.redcell.svc:5432/{}",
                initdb.owner.unwrap(),
                cell.name,
                initdb.database.unwrap()
            )
        );
        let servers: Vec<String> = (0..cell.servers.len())
            .map(|i| format!("cell-{0}-{i}.cell-{0}.redcell.svc:7100", cell.name))
            .collect();
        assert_eq!(cell.servers, servers);
    }
}

/// The model has teeth: a misspelled field, or a value the operator would
/// refuse, fails the read instead of passing unnoticed.
#[test]
fn the_cloudnativepg_model_refuses_unknown_fields_and_values() {
    let text = files(&committed())["postgres/cell-n1-db.yaml"].clone();
    for (from, to, named) in [
        ("failoverQuorum:", "failoverQuorom:", "failoverQuorom"),
        (
            "dataDurability: required",
            "dataDurability: strict",
            "strict",
        ),
        ("method: any", "method: some", "some"),
        ("number: 1", "number: 0", "nonzero"),
        (
            "apiVersion: postgresql.cnpg.io/v1",
            "apiVersion: postgresql.cnpg.io/v2",
            "v2",
        ),
        (
            "  instances: 3",
            "  instances: 3\n  minSyncReplica: 1",
            "minSyncReplica",
        ),
    ] {
        assert!(text.contains(from), "{from}");
        let broken = text.replacen(from, to, 1);
        let error = Cluster::from_yaml(&broken).unwrap_err();
        assert!(error.contains(named), "{to}: {error}");
    }
}

/// Issue 13 item 3: after an expansion (n1 split into a new n4), the render
/// adds n4's logic servers, Service, budget, DB clients policy, migration
/// Job and Cluster, and changes no existing object but the ConfigMap, whose
/// cells.yaml now lists n4 by its in-cluster names.
#[test]
fn an_expansion_adds_the_new_cell_and_changes_only_the_config_map() {
    let before = bundled_topology();
    let after = plan::expand(
        &before,
        &[Split {
            from: "n1".into(),
            into: NewCell {
                name: "n4".into(),
                servers: vec!["127.0.0.1:7131".into(), "127.0.0.1:7132".into()],
                db: "postgres://redcell@127.0.0.1:6104/cell_n4".into(),
            },
        }],
    )
    .unwrap();
    let settings = Settings::default();
    let old = render::render(&before, &settings).unwrap();
    let new = render::render(&after, &settings).unwrap();

    let (old_objects, new_objects) = (objects(&old), objects(&new));
    let added: Vec<&str> = new_objects
        .keys()
        .filter(|key| !old_objects.contains_key(*key))
        .map(String::as_str)
        .collect();
    let removed: Vec<&str> = old_objects
        .keys()
        .filter(|key| !new_objects.contains_key(*key))
        .map(String::as_str)
        .collect();
    let changed: Vec<&str> = old_objects
        .iter()
        .filter(|(key, value)| new_objects.get(*key).is_some_and(|new| new != *value))
        .map(|(key, _)| key.as_str())
        .collect();
    assert_eq!(
        added,
        [
            "Cluster/cell-n4-db",
            "Job/migrate-cell-n4-db",
            "NetworkPolicy/cell-n4-db-clients",
            "PodDisruptionBudget/cell-n4",
            "Service/cell-n4",
            "StatefulSet/cell-n4",
        ]
    );
    assert!(removed.is_empty(), "{removed:?}");
    assert_eq!(changed, ["ConfigMap/redcell-topology"]);
    assert_eq!(new_objects["StatefulSet/cell-n4"]["spec"]["replicas"], 2);

    let config = new_objects["ConfigMap/redcell-topology"]["data"]["cells.yaml"]
        .as_str()
        .unwrap();
    let in_cluster = Topology::parse(config).unwrap();
    let n4 = in_cluster.cell("n4").unwrap();
    assert_eq!(
        n4.servers,
        [
            "cell-n4-0.cell-n4.redcell.svc:7100",
            "cell-n4-1.cell-n4.redcell.svc:7100"
        ]
    );
    assert_eq!(
        n4.db,
        "postgres://redcell@cell-n4-db-rw.redcell.svc:5432/cell_n4"
    );
    assert_eq!(in_cluster.epochs().len(), 2);

    // By file: two new ones, and the ConfigMap's and kustomization's changed.
    let by_path = |manifests: &[render::Manifest]| -> BTreeMap<String, String> {
        manifests
            .iter()
            .map(|m| (m.path.clone(), m.text.clone()))
            .collect()
    };
    let (old_files, new_files) = (by_path(&old), by_path(&new));
    let new_paths: Vec<&String> = new_files
        .keys()
        .filter(|path| !old_files.contains_key(*path))
        .collect();
    assert_eq!(new_paths, ["cell-n4.yaml", "postgres/cell-n4-db.yaml"]);
    let changed_paths: Vec<&String> = old_files
        .iter()
        .filter(|(path, text)| new_files[*path] != **text)
        .map(|(path, _)| path)
        .collect();
    assert_eq!(changed_paths, ["kustomization.yaml", "topology.yaml"]);
}

/// Re-rendering into the same directory: unchanged files are left as they
/// are, a file an earlier render wrote that is no longer rendered is
/// removed, and a file of someone else's is kept.
#[test]
fn render_reports_changes_and_removes_only_its_own_stale_files() {
    let dir = tempfile::tempdir().unwrap();
    let bundled = bundled();
    let args = |dir: &Path| {
        vec![
            "--topology".to_owned(),
            bundled.to_str().unwrap().to_owned(),
            "render".to_owned(),
            "k8s".to_owned(),
            "-o".to_owned(),
            dir.to_str().unwrap().to_owned(),
        ]
    };
    let run = |dir: &Path| {
        let args = args(dir);
        cellctl(&args.iter().map(String::as_str).collect::<Vec<_>>(), None)
    };
    assert_eq!(run(dir.path()).code, 0);
    let count = files(dir.path()).len();
    let ours = std::fs::read_to_string(dir.path().join("cell-n1.yaml"))
        .unwrap()
        .replace("cell-n1", "cell-n9");
    std::fs::write(dir.path().join("cell-n9.yaml"), ours).unwrap();
    std::fs::write(dir.path().join("extra.yaml"), "kind: Secret\n").unwrap();

    let again = run(dir.path());
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert!(
        again.stdout.contains("  unchanged cell-n1.yaml"),
        "{}",
        again.stdout
    );
    assert!(
        again.stdout.contains(&format!(
            "  removed   {}",
            dir.path().join("cell-n9.yaml").display()
        )),
        "{}",
        again.stdout
    );
    assert!(
        again.stdout.ends_with(&format!(
            "{}: {count} files, 0 written, 1 removed\n",
            dir.path().display()
        )),
        "{}",
        again.stdout
    );
    assert!(!dir.path().join("cell-n9.yaml").exists());
    assert!(dir.path().join("extra.yaml").exists());
}

#[test]
fn render_refuses_flags_kubernetes_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let bundled = bundled();
    let out = cellctl(
        &[
            "--topology",
            bundled.to_str().unwrap(),
            "render",
            "k8s",
            "--namespace",
            "Red_Cell",
            "--image",
            "redcell: 1",
            "--storage-class",
            "fast_ssd",
            "-o",
            dir.path().to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.code, 1);
    let shown = bundled.display();
    assert_eq!(
        out.stderr.trim_end(),
        format!(
            "cellctl: cannot render {shown}:\n  \
             --namespace \"Red_Cell\": must be a DNS label (1-63 of a-z, 0-9, -; starting and ending with a letter or digit)\n  \
             --image \"redcell: 1\": must be an image reference without spaces\n  \
             --storage-class \"fast_ssd\": must be a DNS subdomain (a-z, 0-9, -, .)"
        )
    );
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

/// The operator's story of item 3 through the binary: render, `cellctl
/// expand --split n1:n4 --apply` on the file, render again into the same
/// directory: the report names the two new files and the two changed ones
/// (the ConfigMap's, and kustomization.yaml listing the new files), and
/// every other file is left unchanged.
#[test]
fn rendering_after_cellctl_expand_apply_writes_only_the_new_cell_and_the_config_map() {
    let dir = tempfile::tempdir().unwrap();
    let topology = dir.path().join("cells.yaml");
    std::fs::copy(bundled(), &topology).unwrap();
    let out = dir.path().join("k8s");
    let render = || {
        cellctl(
            &[
                "--topology",
                topology.to_str().unwrap(),
                "render",
                "k8s",
                "-o",
                out.to_str().unwrap(),
            ],
            None,
        )
    };
    assert_eq!(render().code, 0);
    let expand = cellctl(
        &[
            "--topology",
            topology.to_str().unwrap(),
            "expand",
            "--split",
            "n1:n4",
            "--apply",
            "--state-dir",
            dir.path().join("state").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(expand.code, 0, "{}", expand.stderr);

    let again = render();
    assert_eq!(again.code, 0, "{}", again.stderr);
    let written: Vec<&str> = again
        .stdout
        .lines()
        .filter_map(|line| line.strip_prefix("  written   "))
        .map(|rest| rest.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        written,
        [
            "topology.yaml",
            "cell-n4.yaml",
            "postgres/cell-n4-db.yaml",
            "kustomization.yaml"
        ],
        "{}",
        again.stdout
    );
    let unchanged = again
        .stdout
        .lines()
        .filter(|line| line.starts_with("  unchanged "))
        .count();
    assert_eq!(
        unchanged,
        files(&out).len() - written.len(),
        "{}",
        again.stdout
    );
    assert!(
        std::fs::read_to_string(out.join("topology.yaml"))
            .unwrap()
            .contains("- cell-n4-0.cell-n4.redcell.svc:7100"),
    );
}
