//! `cellctl route ENVELOPE_ID`: where an envelope lives.

use std::io::Write;

use redcell_topology::{EnvelopeId, Topology};

use crate::CommandError;

pub fn run(topology: &Topology, text: &str, out: &mut impl Write) -> Result<(), CommandError> {
    let id: EnvelopeId = text
        .parse()
        .map_err(|error| CommandError::Input(format!("{text:?}: {error}")))?;
    let cell = topology
        .route(&id)
        .map_err(|error| CommandError::Input(format!("{text:?}: {error}")))?;
    let date = id.date();
    let region = topology.region_name(id.region()).unwrap_or("?");
    writeln!(out, "envelope  {id}")?;
    writeln!(
        out,
        "minted    {:04}-{:02}-{:02} (partition day {:02})",
        date.year(),
        date.month(),
        date.day(),
        date.day()
    )?;
    writeln!(out, "region    {} ({region})", id.region().get())?;
    writeln!(out, "epoch     {:02}", id.epoch().get())?;
    writeln!(out, "sequence  {}", id.sequence())?;
    writeln!(out, "suffix    {}", id.suffix())?;
    writeln!(out, "cell      {} ({})", cell.name, cell.status.as_str())?;
    writeln!(out, "servers   {}", cell.servers.join(", "))?;
    Ok(())
}
