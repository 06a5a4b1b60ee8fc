//! `cellctl dev-token`: a bearer token for local use of the router with an
//! HS256 key. Production routers verify RS256 tokens of the identity provider;
//! nothing in a server mints tokens. The minting is [`redcell_proto::token`]'s
//! (the claims the router's verifier reads), so cellctl links no router.

use std::{io::Write, path::Path};

use crate::CommandError;

pub fn run(
    user: &str,
    key_file: &Path,
    ttl_secs: u64,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let key = std::fs::read(key_file).map_err(|error| {
        CommandError::Input(format!(
            "--hs256-key-file: cannot read {}: {error}",
            key_file.display()
        ))
    })?;
    let token = redcell_proto::token::mint_hs256(&key, user, ttl_secs)
        .map_err(|error| CommandError::Input(format!("cannot mint a token: {error}")))?;
    writeln!(out, "{token}")?;
    Ok(())
}
