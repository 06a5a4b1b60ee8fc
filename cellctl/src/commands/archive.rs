//! `cellctl archive --before YYYY-MM-DD --to DIR [--cell C] [--apply]`:
//! exports and deletes the rows of settled envelopes minted before a date
//! (by their ID's YYMMDD), keeping their carried totals so reconcile still
//! balances and Get names the archive (the order-DB side, and why it is
//! safe, is `redcell_cell::archive`).
//!
//! Without `--apply` a dry run: per cell, what would go, and the unsettled
//! envelopes that would refuse it. With it, per cell in one transaction: the
//! settled rows locked; one JSON-lines file per table
//! (`<cell>-before-<date>-<archive id>-<table>.jsonl`, created new, never
//! overwritten) and a manifest (`...-manifest.json`: rows and SHA-256 of
//! each file), each fsynced, and the directory fsynced; only then the carried
//! totals inserted and the rows deleted, and the transaction committed.
//!
//! Refuses (exit 1, nothing changed in any cell) when any cell has an
//! envelope older than the date that is not settled: how many, and a few
//! IDs. There is no `--skip-unsettled`: an unsettled envelope of a cold day
//! is a stuck transfer or a stuck Send, which an operator settles
//! (`cellctl transfers --stuck`) before the day is archived. A re-run finds
//! nothing and says so. The date may not be after today (UTC): a day is
//! cold only once it is over.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    time::SystemTime,
};

use clap::Args;
use redcell_cell::archive::{self, ArchiveError, Counts, Record, Survey, Table};
use redcell_migrations::Schema;
use redcell_topology::{MintDate, Topology};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::reconcile::{connect_cells, runtime};
use crate::CommandError;

/// Arguments of `cellctl archive`.
#[derive(Debug, Args)]
pub struct ArchiveArgs {
    /// Archive envelopes minted before this UTC day (YYYY-MM-DD), by the
    /// date their ID carries.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub before: String,
    /// The directory the files are written to (created if missing).
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// Only this cell (default: every cell of the topology).
    #[arg(long)]
    pub cell: Option<String>,
    /// Archive (default: a dry run that changes nothing).
    #[arg(long)]
    pub apply: bool,
}

/// `cellctl archive`.
pub fn run(
    topology: &Topology,
    args: ArchiveArgs,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let before = parse_before(&args.before, SystemTime::now())?;
    runtime()?.block_on(run_async(topology, &args, before, out))
}

/// `--before`: a calendar date in 2000-2099, not after `now`'s UTC day.
fn parse_before(text: &str, now: SystemTime) -> Result<MintDate, CommandError> {
    let bad = |why: &str| CommandError::Input(format!("--before: {text:?} {why}"));
    let parts: Vec<&str> = text.split('-').collect();
    let [year, month, day] = parts[..] else {
        return Err(bad("is not a date (YYYY-MM-DD)"));
    };
    let digits =
        |part: &str, len: usize| part.len() == len && part.bytes().all(|b| b.is_ascii_digit());
    if !(digits(year, 4) && digits(month, 2) && digits(day, 2)) {
        return Err(bad("is not a date (YYYY-MM-DD)"));
    }
    let date = match (year.parse(), month.parse(), day.parse()) {
        (Ok(year), Ok(month), Ok(day)) => MintDate::new(year, month, day),
        _ => None,
    }
    .ok_or_else(|| bad("is not a calendar date in 2000-2099"))?;
    let today = MintDate::from_system_time(now)
        .ok_or_else(|| CommandError::Input("the clock is outside 2000-2099".into()))?;
    if date > today {
        return Err(bad(&format!(
            "is after today ({}): a day is archived once it is over",
            archive::iso(today)
        )));
    }
    Ok(date)
}

async fn run_async(
    topology: &Topology,
    args: &ArchiveArgs,
    before: MintDate,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let date = archive::iso(before);
    let mut cells = connect_cells(topology, args.cell.as_deref()).await?;
    // Every cell surveyed first: an unsettled envelope anywhere refuses the
    // whole run before any cell changes.
    let mut surveys = Vec::with_capacity(cells.len());
    for (cell, client) in &cells {
        redcell_migrations::check_current(client, Schema::Orders)
            .await
            .map_err(|error| CommandError::Input(format!("cell {cell}: {error}")))?;
        let survey = archive::survey(client, before)
            .await
            .map_err(|error| cell_error(cell, &error))?;
        surveys.push(survey);
    }
    let mode = if args.apply { "" } else { " (dry run)" };
    writeln!(
        out,
        "archive{mode}: settled envelopes minted before {date} (by their ID's date), {} cells",
        cells.len()
    )?;
    let mut refused = Vec::new();
    for ((cell, _), survey) in cells.iter().zip(&surveys) {
        writeln!(out, "  cell {cell:<8} {}", describe(survey, args.apply))?;
        if survey.unsettled.count > 0 {
            refused.push(format!(
                "cell {cell}: {} unsettled envelope(s) minted before {date} (e.g. {})",
                survey.unsettled.count,
                survey.unsettled.sample.join(", ")
            ));
        }
    }
    if !refused.is_empty() {
        return Err(CommandError::Input(format!(
            "archive refused, nothing changed: {}; settle them first (cellctl transfers --stuck) \
             or archive an earlier day",
            refused.join("; ")
        )));
    }
    if surveys.iter().all(|survey| survey.settled.envelopes == 0) {
        writeln!(out, "nothing to archive")?;
        return Ok(());
    }
    if !args.apply {
        writeln!(
            out,
            "nothing changed; run again with --apply to archive into {}",
            args.to.display()
        )?;
        return Ok(());
    }
    std::fs::create_dir_all(&args.to).map_err(|error| {
        CommandError::Input(format!(
            "--to: cannot create {}: {error}",
            args.to.display()
        ))
    })?;
    let directory = std::path::absolute(&args.to)
        .map_err(|error| CommandError::Input(format!("--to: {}: {error}", args.to.display())))?;
    for (cell, client) in &mut cells {
        match archive_cell(cell, client, before, &directory).await? {
            Some((deleted, manifest)) => writeln!(
                out,
                "  cell {cell:<8} archived {} -> {}",
                rows(&deleted),
                manifest.display()
            )?,
            None => writeln!(out, "  cell {cell:<8} nothing to archive")?,
        }
    }
    Ok(())
}

fn cell_error(cell: &str, error: &ArchiveError) -> CommandError {
    CommandError::Input(format!("cell {cell}: {error}"))
}

fn rows(counts: &Counts) -> String {
    format!(
        "{} envelopes, {} claims, {} transfers, {} send requests",
        counts.envelopes, counts.claims, counts.transfers, counts.send_requests
    )
}

fn describe(survey: &Survey, apply: bool) -> String {
    let mut line = if survey.settled.envelopes == 0 {
        "nothing to archive".to_owned()
    } else if apply {
        format!("to archive: {}", rows(&survey.settled))
    } else {
        format!("would archive {}", rows(&survey.settled))
    };
    if survey.unsettled.count > 0 {
        line.push_str(&format!(
            "; {} unsettled (e.g. {})",
            survey.unsettled.count,
            survey.unsettled.sample.join(", ")
        ));
    }
    line
}

/// One cell: lock, export and fsync, then carry and delete (one
/// transaction). Returns what was deleted and the manifest's path, or
/// `None` when nothing was left to archive.
async fn archive_cell(
    cell: &str,
    client: &mut Client,
    before: MintDate,
    directory: &Path,
) -> Result<Option<(Counts, PathBuf)>, CommandError> {
    let Some(run) = archive::begin(client, before)
        .await
        .map_err(|error| cell_error(cell, &error))?
    else {
        return Ok(None);
    };
    let stem = format!(
        "{cell}-before-{}-{}",
        archive::iso(before),
        run.archive_id()
    );
    let mut exported = Counts::default();
    let mut files = Vec::new();
    for table in Table::ALL {
        let name = format!("{stem}-{}.jsonl", table.name());
        let mut file = HashedFile::create(&directory.join(&name), cell)?;
        let rows = run
            .export(table, |line| file.line(line))
            .await
            .map_err(|error| cell_error(cell, &error))?;
        let sha256 = file.seal(cell)?;
        exported.set(table, rows);
        files.push(serde_json::json!({
            "table": table.name(),
            "file": name,
            "rows": rows,
            "sha256": sha256,
        }));
    }
    let manifest = serde_json::json!({
        "cell": cell,
        "archive_id": run.archive_id(),
        "before": archive::iso(before),
        "selection": "settled envelopes (exhausted, expired or cancelled, every transfer done) \
                      whose ID's mint date is before `before`",
        "files": files,
    });
    let manifest_name = format!("{stem}-manifest.json");
    let manifest_path = directory.join(&manifest_name);
    let mut file = HashedFile::create(&manifest_path, cell)?;
    let text = serde_json::to_string_pretty(&manifest)
        .map_err(|error| CommandError::Input(format!("cell {cell}: manifest: {error}")))?;
    file.line(&text)
        .map_err(|error| write_error(cell, &manifest_path, &error))?;
    let manifest_sha256 = file.seal(cell)?;
    // The new names durable too, before any row is deleted.
    File::open(directory)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| write_error(cell, directory, &error))?;
    let record = Record {
        directory: directory.display().to_string(),
        manifest: manifest_name,
        manifest_sha256,
    };
    let deleted = run
        .finish(&record, exported)
        .await
        .map_err(|error| cell_error(cell, &error))?;
    Ok(Some((deleted, manifest_path)))
}

fn write_error(cell: &str, path: &Path, error: &std::io::Error) -> CommandError {
    CommandError::Input(format!(
        "cell {cell}: writing {}: {error}; nothing deleted",
        path.display()
    ))
}

/// A new file (never an existing one) written line by line, hashing what it
/// writes; [`HashedFile::seal`] flushes and fsyncs it.
struct HashedFile {
    path: PathBuf,
    writer: BufWriter<File>,
    hasher: Sha256,
}

impl HashedFile {
    fn create(path: &Path, cell: &str) -> Result<HashedFile, CommandError> {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|error| write_error(cell, path, &error))?;
        Ok(HashedFile {
            path: path.to_owned(),
            writer: BufWriter::new(file),
            hasher: Sha256::new(),
        })
    }

    fn line(&mut self, line: &str) -> std::io::Result<()> {
        for part in [line.as_bytes(), b"\n"] {
            self.writer.write_all(part)?;
            self.hasher.update(part);
        }
        Ok(())
    }

    /// Flushed and fsynced; the SHA-256 of its bytes, lowercase hex.
    fn seal(self, cell: &str) -> Result<String, CommandError> {
        let path = self.path;
        let file = self
            .writer
            .into_inner()
            .map_err(|error| write_error(cell, &path, error.error()))?;
        file.sync_all()
            .map_err(|error| write_error(cell, &path, &error))?;
        Ok(self
            .hasher
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect())
    }
}
