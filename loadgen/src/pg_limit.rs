//! PostgreSQL's own ceiling on this machine, measured beside every benchmark:
//! the single-row update rate (pgbench), which bounds any strategy that
//! commits once per Open of one envelope.

/// PostgreSQL's own single-row update rate on this machine and server settings:
/// the ceiling of any strategy that commits once per Open of one envelope.
pub async fn single_row_update_limit(
    server: &redcell_harness::PgServer,
    clients: usize,
) -> Result<f64, String> {
    let database = "bench_limit";
    server
        .create_database(database)
        .await
        .map_err(|e| e.to_string())?;
    let client = server.connect(database).await.map_err(|e| e.to_string())?;
    client
        .batch_execute("CREATE TABLE hot (id int PRIMARY KEY, v bigint NOT NULL); INSERT INTO hot VALUES (1, 0);")
        .await
        .map_err(|e| e.to_string())?;
    let script = std::env::temp_dir().join(format!("redcell-pgbench-{}.sql", std::process::id()));
    std::fs::write(&script, "UPDATE hot SET v = v + 1 WHERE id = 1;\n")
        .map_err(|e| e.to_string())?;
    let binaries = redcell_harness::PgBinaries::locate(&redcell_harness::BinarySearch::from_env())
        .map_err(|e| e.to_string())?;
    let output = tokio::process::Command::new(binaries.bindir().join("pgbench"))
        .args([
            "-n",
            "-j",
            "2",
            "-T",
            "5",
            "-h",
            server.host(),
            "-U",
            "postgres",
        ])
        .arg("-c")
        .arg(clients.to_string())
        .arg("-p")
        .arg(server.port().to_string())
        .arg("-f")
        .arg(&script)
        .arg(database)
        .output()
        .await
        .map_err(|e| format!("pgbench: {e}"))?;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .ok_or_else(|| {
            format!(
                "pgbench printed no tps: {text} {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
}
