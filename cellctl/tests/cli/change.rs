//! Topology changes (issue 11 item 1-2): `cellctl fail` / `restore` through the
//! one change module — dry run by default, a unified diff and the new mint
//! pool, an atomic write keeping the previous version, and refusals that
//! change nothing (an unknown cell, the last active cell of a region, a file
//! changed since the plan, a second writer holding the lock).

use std::path::Path;

use redcell_cellctl::change::{self, ContentHash, WriteError};
use redcell_topology::{CellStatus, Topology, plan};

use super::{bundled, cellctl, write_temp};

fn bundled_text() -> String {
    std::fs::read_to_string(bundled()).unwrap()
}

fn status_of(path: &Path, cell: &str) -> CellStatus {
    let topology = Topology::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
    topology.cell(cell).unwrap().status
}

/// Every entry of the directory but the lock file: no temp file is left.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "cells.yaml.lock")
        .collect();
    names.sort();
    names
}

/// The diff of `fail n2` on the bundled cells.yaml (canonical form: the
/// context lines are indented by the rendering, plus the diff's one column).
const N2_FAILED_DIFF: &str = concat!(
    "plan: fail n2\n",
    "--- cells.yaml\n",
    "+++ cells.yaml (planned)\n",
    "@@ -12,7 +12,7 @@\n",
    "   db: postgres://redcell@127.0.0.1:6101/cell_n1\n",
    " - name: n2\n",
    "   region: north\n",
    "-  status: active\n",
    "+  status: failed\n",
    "   servers:\n",
    "   - 127.0.0.1:7111\n",
    "   - 127.0.0.1:7112\n",
);

const POOL_WITHOUT_N2: &str = "mint pool after the change:\n\
region north: epoch 0, 667 suffixes\n\
\x20 n1        49.92%  000-332\n\
\x20 n3        50.07%  666-999\n\
region south: epoch 0, 1000 suffixes\n\
\x20 s1        50.00%  000-499\n\
\x20 s2        50.00%  500-999\n";

#[test]
fn fail_dry_run_prints_the_diff_and_pool_and_writes_nothing() {
    let original = bundled_text();
    let (dir, path) = write_temp("cells.yaml", &original);
    let out = cellctl(&["fail", "n2"], Some(&path));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        format!(
            "{N2_FAILED_DIFF}{POOL_WITHOUT_N2}\
             note: cells.yaml is written in canonical form: its comments and layout are not kept \
             (the current file is kept as cells.yaml.prev)\n\
             dry run: nothing written; run again with --apply to write {}\n",
            path.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
    assert_eq!(entries(dir.path()), ["cells.yaml"]);
}

#[test]
fn fail_apply_writes_the_file_keeps_the_previous_and_restore_brings_it_back() {
    let original = bundled_text();
    let (dir, path) = write_temp("cells.yaml", &original);
    let pool_before = cellctl(&["mint-pool"], Some(&path));
    assert_eq!(pool_before.code, 0, "{}", pool_before.stderr);

    let out = cellctl(&["fail", "n2", "--apply"], Some(&path));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with(N2_FAILED_DIFF), "{}", out.stdout);
    assert!(out.stdout.contains(POOL_WITHOUT_N2), "{}", out.stdout);
    let prev = dir.path().join("cells.yaml.prev");
    assert!(
        out.stdout
            .contains(&format!("\napplied: wrote {} (topology ", path.display()))
            && out
                .stdout
                .contains(&format!("previous version kept in {}\n", prev.display())),
        "{}",
        out.stdout
    );
    // The new file validates, n2 is failed, everything else is as before.
    let validate = cellctl(&["validate", path.to_str().unwrap()], None);
    assert_eq!(validate.code, 0, "{}", validate.stderr);
    assert_eq!(status_of(&path, "n2"), CellStatus::Failed);
    let old = Topology::parse(&original).unwrap();
    let new = Topology::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        plan::fail(&old, "n2").unwrap().fingerprint(),
        new.fingerprint()
    );
    assert_eq!(std::fs::read_to_string(&prev).unwrap(), original);
    assert_eq!(entries(dir.path()), ["cells.yaml", "cells.yaml.prev"]);
    let pool = cellctl(&["mint-pool", "--region", "north"], Some(&path));
    assert_eq!(
        pool.stdout,
        "region north: epoch 0, 667 suffixes\n\
         \x20 n1        49.92%  000-332\n\
         \x20 n3        50.07%  666-999\n"
    );

    // Restore: n2 is back in the pool; .prev is now the failed version.
    let failed_text = std::fs::read_to_string(&path).unwrap();
    let back = cellctl(&["restore", "n2", "--apply"], Some(&path));
    assert_eq!(back.code, 0, "{}", back.stderr);
    assert!(
        back.stdout
            .contains("-  status: failed\n+  status: active\n"),
        "{}",
        back.stdout
    );
    assert_eq!(status_of(&path, "n2"), CellStatus::Active);
    assert_eq!(std::fs::read_to_string(&prev).unwrap(), failed_text);
    assert_eq!(
        Topology::parse(&std::fs::read_to_string(&path).unwrap())
            .unwrap()
            .fingerprint(),
        old.fingerprint()
    );
    let pool_after = cellctl(&["mint-pool"], Some(&path));
    assert_eq!(pool_after.stdout, pool_before.stdout);
    assert_eq!(entries(dir.path()), ["cells.yaml", "cells.yaml.prev"]);
}

#[test]
fn the_last_active_cell_of_a_region_is_refused_unless_drained() {
    let (dir, path) = write_temp("cells.yaml", &bundled_text());
    let first = cellctl(&["fail", "s1", "--apply"], Some(&path));
    assert_eq!(first.code, 0, "{}", first.stderr);
    let written = std::fs::read(&path).unwrap();
    let prev = std::fs::read(dir.path().join("cells.yaml.prev")).unwrap();

    for args in [&["fail", "s2"][..], &["fail", "s2", "--apply"][..]] {
        let out = cellctl(args, Some(&path));
        assert_eq!(out.code, 1, "{}", out.stdout);
        assert_eq!(
            out.stderr,
            "cellctl: cannot fail s2: the planned topology is invalid:\n\
             cells[4].status: \"s2\" is the last active cell of its region; drain the region \
             first (minting.region_override)\n\
             minting: region \"south\" has no active cell in minting epoch 0 and no region_override\n"
        );
        assert!(out.stdout.is_empty(), "{}", out.stdout);
        assert_eq!(std::fs::read(&path).unwrap(), written);
        assert_eq!(
            std::fs::read(dir.path().join("cells.yaml.prev")).unwrap(),
            prev
        );
    }

    // Drained into north, south may lose its last active cell.
    let drained = bundled_text()
        .replace("region_override: {}", "region_override: {south: north}")
        .replace(
            "    region: south\n    status: active\n    servers: [\"127.0.0.1:7201\"",
            "    region: south\n    status: failed\n    servers: [\"127.0.0.1:7201\"",
        );
    assert_eq!(status_of_text(&drained, "s1"), CellStatus::Failed);
    let (_dir, drained_path) = write_temp("cells.yaml", &drained);
    let out = cellctl(&["fail", "s2", "--apply"], Some(&drained_path));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(status_of(&drained_path, "s2"), CellStatus::Failed);
}

fn status_of_text(text: &str, cell: &str) -> CellStatus {
    Topology::parse(text).unwrap().cell(cell).unwrap().status
}

#[test]
fn unknown_cells_and_no_op_changes_are_refused_and_change_nothing() {
    let original = bundled_text();
    let (dir, path) = write_temp("cells.yaml", &original);
    for (args, message) in [
        (
            &["fail", "n9", "--apply"][..],
            r#"cannot fail n9: unknown cell "n9""#,
        ),
        (
            &["restore", "n9", "--apply"][..],
            r#"cannot restore n9: unknown cell "n9""#,
        ),
        (
            &["restore", "n1", "--apply"][..],
            r#"cannot restore n1: cell "n1" is already active"#,
        ),
    ] {
        let out = cellctl(args, Some(&path));
        assert_eq!(out.code, 1, "{args:?}: {}", out.stdout);
        assert_eq!(out.stderr, format!("cellctl: {message}\n"));
        assert!(out.stdout.is_empty());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
        assert_eq!(entries(dir.path()), ["cells.yaml"]);
    }
}

/// The file changes between the plan and the write (another operator, an
/// editor): the write is refused and the other change survives.
#[test]
fn a_change_made_after_the_plan_is_refused_and_the_file_untouched() {
    let (dir, path) = write_temp("cells.yaml", &bundled_text());
    let planned = change::plan(&path, |topology| plan::fail(topology, "n1")).unwrap();
    let theirs = bundled_text().replace("degrade: {}", "degrade: {history: off}");
    std::fs::write(&path, &theirs).unwrap();

    let error = change::write_atomically(&path, &planned.new_text, planned.read_hash).unwrap_err();
    let expected = planned.read_hash.short();
    let found = ContentHash::of(theirs.as_bytes()).short();
    assert!(
        matches!(&error, WriteError::Changed { expected: e, found: f, .. } if *e == expected && *f == found),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "{} changed since it was read (sha256 {expected} at plan time, {found} now); \
             nothing written — plan again",
            path.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), theirs);
    assert_eq!(entries(dir.path()), ["cells.yaml"]);
}

/// A second writer while one holds the lock is refused, not queued.
#[test]
fn a_second_writer_is_refused_while_the_lock_is_held() {
    let original = bundled_text();
    let (dir, path) = write_temp("cells.yaml", &original);
    let planned = change::plan(&path, |topology| plan::fail(topology, "n1")).unwrap();
    let holder = std::fs::File::create(dir.path().join("cells.yaml.lock")).unwrap();
    holder.lock().unwrap();

    let error = change::write_atomically(&path, &planned.new_text, planned.read_hash).unwrap_err();
    assert!(matches!(error, WriteError::Locked { .. }), "{error:?}");
    let out = cellctl(&["fail", "n1", "--apply"], Some(&path));
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert_eq!(
        out.stderr,
        format!(
            "cellctl: another cellctl is changing {} (lock {} is held); nothing written\n",
            path.display(),
            dir.path().join("cells.yaml.lock").display()
        )
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);

    // Released, the same planned write goes through. Unlock explicitly: a
    // child another test forks in this instant shares the lock's open file
    // until it execs, so closing our descriptor alone may not release it.
    holder.unlock().unwrap();
    drop(holder);
    change::write_atomically(&path, &planned.new_text, planned.read_hash).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), planned.new_text);
}

#[test]
fn write_atomically_replaces_keeps_the_previous_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cells.yaml");
    std::fs::write(&path, "first\n").unwrap();
    let prev = change::write_atomically(&path, "second\n", ContentHash::of(b"first\n")).unwrap();
    assert_eq!(prev, dir.path().join("cells.yaml.prev"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "second\n");
    assert_eq!(std::fs::read_to_string(&prev).unwrap(), "first\n");
    // Only one previous version is kept: the one just replaced.
    change::write_atomically(&path, "third\n", ContentHash::of(b"second\n")).unwrap();
    assert_eq!(std::fs::read_to_string(&prev).unwrap(), "second\n");
    assert_eq!(entries(dir.path()), ["cells.yaml", "cells.yaml.prev"]);

    // A stale hash writes nothing, not even the .prev.
    let stale = change::write_atomically(&path, "fourth\n", ContentHash::of(b"first\n"));
    assert!(
        matches!(stale, Err(WriteError::Changed { .. })),
        "{stale:?}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "third\n");
    assert_eq!(std::fs::read_to_string(&prev).unwrap(), "second\n");

    // A missing file is an I/O error naming it.
    let missing = dir.path().join("nowhere").join("cells.yaml");
    let error = change::write_atomically(&missing, "x\n", ContentHash::of(b"")).unwrap_err();
    assert!(matches!(error, WriteError::Io { .. }), "{error:?}");
    assert!(!missing.exists());
}

#[test]
fn unified_diff_shows_hunks_with_context() {
    assert_eq!(
        change::unified_diff("a\nb\n", "a\nb\n", "f"),
        "--- f\n+++ f (planned)\n(no change)\n"
    );
    let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n13\n14\n15\n";
    let new = "1\n2\nthree\n4\n5\n6\n7\n8\n9\n10\n11\n12\n13\n14\n15\n16\n";
    assert_eq!(
        change::unified_diff(old, new, "f"),
        "--- f\n+++ f (planned)\n\
         @@ -1,6 +1,6 @@\n 1\n 2\n-3\n+three\n 4\n 5\n 6\n\
         @@ -13,3 +13,4 @@\n 13\n 14\n 15\n+16\n"
    );
}

/// The diff of `drain-region north --to south` on the bundled cells.yaml.
const NORTH_DRAINED_DIFF: &str = concat!(
    "plan: drain-region north --to south\n",
    "--- cells.yaml\n",
    "+++ cells.yaml (planned)\n",
    "@@ -50,4 +50,5 @@\n",
    "       s2: 500-999\n",
    " minting:\n",
    "   epoch: 0\n",
    "-  region_override: {}\n",
    "+  region_override:\n",
    "+    north: south\n",
    "mint pool after the change:\n",
    "region north: epoch 0, 1000 suffixes, minted in south (region_override)\n",
    "  s1        50.00%  000-499\n",
    "  s2        50.00%  500-999\n",
    "region south: epoch 0, 1000 suffixes\n",
    "  s1        50.00%  000-499\n",
    "  s2        50.00%  500-999\n",
);

fn topology_of(path: &Path) -> Topology {
    Topology::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn drain_region_dry_run_prints_the_diff_and_pool_and_writes_nothing() {
    let original = bundled_text();
    let (dir, path) = write_temp("cells.yaml", &original);
    let out = cellctl(&["drain-region", "north", "--to", "south"], Some(&path));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with(NORTH_DRAINED_DIFF), "{}", out.stdout);
    assert!(
        out.stdout.ends_with(&format!(
            "dry run: nothing written; run again with --apply to write {}\n",
            path.display()
        )),
        "{}",
        out.stdout
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
    assert_eq!(entries(dir.path()), ["cells.yaml"]);
}

#[test]
fn drain_region_apply_mints_in_the_target_and_undrain_brings_it_back() {
    let original = bundled_text();
    let (dir, path) = write_temp("cells.yaml", &original);
    let prev = dir.path().join("cells.yaml.prev");
    let out = cellctl(
        &["drain-region", "north", "--to", "south", "--apply"],
        Some(&path),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with(NORTH_DRAINED_DIFF), "{}", out.stdout);
    assert!(out.stdout.contains("\napplied: wrote "), "{}", out.stdout);
    let drained = topology_of(&path);
    let north = drained.region_digit("north").unwrap();
    assert_eq!(drained.mint_region(north), drained.region_digit("south"));
    // North's existing envelopes still route to north's cells.
    let route = cellctl(&["route", "2601221000000000001400"], Some(&path));
    assert_eq!(route.code, 0, "{}", route.stderr);
    assert!(route.stdout.contains("n2"), "{}", route.stdout);
    assert_eq!(std::fs::read_to_string(&prev).unwrap(), original);
    assert_eq!(entries(dir.path()), ["cells.yaml", "cells.yaml.prev"]);

    // Draining again to the same target changes nothing.
    let drained_text = std::fs::read_to_string(&path).unwrap();
    let again = cellctl(
        &["drain-region", "north", "--to", "south", "--apply"],
        Some(&path),
    );
    assert_eq!(again.code, 1, "{}", again.stdout);
    assert_eq!(
        again.stderr,
        "cellctl: cannot drain-region north --to south: region \"north\" is already drained to \"south\"\n"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), drained_text);

    let back = cellctl(&["undrain", "north", "--apply"], Some(&path));
    assert_eq!(back.code, 0, "{}", back.stderr);
    assert!(
        back.stdout.starts_with(
            "plan: undrain north\n--- cells.yaml\n+++ cells.yaml (planned)\n@@ -50,5 +50,4 @@\n"
        ) && back
            .stdout
            .contains("-  region_override:\n-    north: south\n+  region_override: {}\n"),
        "{}",
        back.stdout
    );
    assert_eq!(
        topology_of(&path).fingerprint(),
        Topology::parse(&original).unwrap().fingerprint()
    );
    assert_eq!(std::fs::read_to_string(&prev).unwrap(), drained_text);
    let undrained = cellctl(&["undrain", "north", "--apply"], Some(&path));
    assert_eq!(undrained.code, 1);
    assert_eq!(
        undrained.stderr,
        "cellctl: cannot undrain north: region \"north\" is not drained\n"
    );
}

#[test]
fn drain_region_refusals_name_the_region_and_change_nothing() {
    let original = bundled_text();
    let (dir, path) = write_temp("cells.yaml", &original);
    for (args, message) in [
        (
            &["drain-region", "north", "--to", "west", "--apply"][..],
            r#"cannot drain-region north --to west: unknown region "west""#,
        ),
        (
            &["drain-region", "west", "--to", "north", "--apply"][..],
            r#"cannot drain-region west --to north: unknown region "west""#,
        ),
        (
            &["drain-region", "north", "--to", "north", "--apply"][..],
            r#"cannot drain-region north --to north: region "north" cannot be drained into itself (to stop a drain: undrain north)"#,
        ),
        (
            &["undrain", "west", "--apply"][..],
            r#"cannot undrain west: unknown region "west""#,
        ),
        (
            &["undrain", "south", "--apply"][..],
            r#"cannot undrain south: region "south" is not drained"#,
        ),
    ] {
        let out = cellctl(args, Some(&path));
        assert_eq!(out.code, 1, "{args:?}: {}", out.stdout);
        assert_eq!(out.stderr, format!("cellctl: {message}\n"), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
        assert_eq!(entries(dir.path()), ["cells.yaml"]);
    }
    // A drain through a drained region (south into north, then north into
    // south) would chain overrides: refused by validation, naming both.
    let south_drained = original.replace("region_override: {}", "region_override: {south: north}");
    let (_dir, drained_path) = write_temp("cells.yaml", &south_drained);
    let out = cellctl(
        &["drain-region", "north", "--to", "south", "--apply"],
        Some(&drained_path),
    );
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert_eq!(
        out.stderr,
        "cellctl: cannot drain-region north --to south: the planned topology is invalid:\n\
         minting.region_override.south: target region \"north\" is itself overridden to \"south\"; overrides do not chain\n\
         minting.region_override.north: target region \"south\" is itself overridden to \"north\"; overrides do not chain\n"
    );
    assert_eq!(
        std::fs::read_to_string(&drained_path).unwrap(),
        south_drained
    );
}

#[test]
fn degrade_dry_run_prints_the_diff_and_writes_nothing() {
    let original = bundled_text();
    let (dir, path) = write_temp("cells.yaml", &original);
    let out = cellctl(&["degrade", "claims=off", "history.pages=2"], Some(&path));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.starts_with(concat!(
            "plan: degrade claims=off history.pages=2\n",
            "--- cells.yaml\n",
            "+++ cells.yaml (planned)\n",
            "@@ -51,3 +51,7 @@\n",
            " minting:\n",
            "   epoch: 0\n",
            "   region_override: {}\n",
            "+degrade:\n",
            "+  history:\n",
            "+    pages: 2\n",
            "+  claims: off\n",
            "mint pool after the change:\n",
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("dry run: nothing written"),
        "{}",
        out.stdout
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
    assert_eq!(entries(dir.path()), ["cells.yaml"]);
}

#[test]
fn degrade_apply_sets_switches_and_on_removes_them() {
    use redcell_topology::{ClaimsMode, HistoryMode};
    let original = bundled_text();
    let (dir, path) = write_temp("cells.yaml", &original);
    let prev = dir.path().join("cells.yaml.prev");
    let out = cellctl(
        &["degrade", "claims=off", "history=off", "--apply"],
        Some(&path),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("\napplied: wrote "), "{}", out.stdout);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.ends_with("degrade:\n  history: off\n  claims: off\n"),
        "{text}"
    );
    let degraded = topology_of(&path);
    assert_eq!(degraded.claims_mode(), ClaimsMode::Off);
    assert_eq!(degraded.history_mode(), HistoryMode::Off);
    assert_eq!(std::fs::read_to_string(&prev).unwrap(), original);
    let validate = cellctl(&["validate", path.to_str().unwrap()], None);
    assert_eq!(validate.code, 0, "{}", validate.stderr);

    // claims=on removes the key; history stays off.
    let both_off = std::fs::read_to_string(&path).unwrap();
    let out = cellctl(&["degrade", "claims=on", "--apply"], Some(&path));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("-  claims: off\n"), "{}", out.stdout);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with("degrade:\n  history: off\n"), "{text}");
    assert_eq!(std::fs::read_to_string(&prev).unwrap(), both_off);

    // history=on removes the last switch, and with it `degrade:`.
    let out = cellctl(&["degrade", "history=on", "--apply"], Some(&path));
    assert_eq!(out.code, 0, "{}", out.stderr);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("degrade"), "{text}");
    assert_eq!(
        topology_of(&path).fingerprint(),
        Topology::parse(&original).unwrap().fingerprint()
    );
    assert_eq!(entries(dir.path()), ["cells.yaml", "cells.yaml.prev"]);
}

#[test]
fn degrade_refuses_bad_keys_and_values_naming_them_and_changes_nothing() {
    let original = bundled_text();
    let (dir, path) = write_temp("cells.yaml", &original);
    let valid = "(valid: history=on|off, history.pages=N, claims=on|off)";
    for (args, message) in [
        (
            &["degrade", "claim=off", "--apply"][..],
            format!("cannot degrade: unknown switch \"claim\" {valid}"),
        ),
        (
            &["degrade", "history=off", "claims=maybe", "--apply"][..],
            format!("cannot degrade: claims: expected on or off, not \"maybe\" {valid}"),
        ),
        (
            &["degrade", "history", "--apply"][..],
            format!("cannot degrade: \"history\" is not KEY=VALUE {valid}"),
        ),
        (
            &["degrade", "history.pages=many", "--apply"][..],
            format!("cannot degrade: history.pages: expected a number of pages, not \"many\" {valid}"),
        ),
        (
            &["degrade", "history.pages=0", "--apply"][..],
            "cannot degrade history.pages=0: the planned topology is invalid:\n\
             degrade.history.pages: must be at least 1 (use `history: off` to turn it off)"
                .to_owned(),
        ),
        (
            &["degrade", "history=off", "history.pages=2", "--apply"][..],
            "cannot degrade history=off history.pages=2: degrade switch \"history\" is given twice"
                .to_owned(),
        ),
        (
            &["degrade", "claims=on", "--apply"][..],
            "cannot degrade claims=on: nothing to change: the degrade switches are already claims=on"
                .to_owned(),
        ),
    ] {
        let out = cellctl(args, Some(&path));
        assert_eq!(out.code, 1, "{args:?}: {}", out.stdout);
        assert_eq!(out.stderr, format!("cellctl: {message}\n"), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
        assert_eq!(entries(dir.path()), ["cells.yaml"]);
    }
    // No switch at all is a usage error (clap's exit code 2).
    let out = cellctl(&["degrade", "--apply"], Some(&path));
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("KEY=VALUE"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
}
