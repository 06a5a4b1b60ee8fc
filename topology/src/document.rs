//! The cells.yaml file format, as written by people: raw serde structs that
//! mirror the file one to one, and the one function that parses YAML.
//!
//! Nothing here is validated. [`crate::Topology::from_document`] turns a
//! [`Document`] into the always-valid model, collecting every error; plans edit a
//! `Document` and validate the result again, so a topology that exists has passed
//! validation. Enumerations (`status`) stay strings here so that an unknown value
//! becomes a collected error naming its path instead of an early parse failure.
//!
//! YAML parsing stays behind [`parse`] and [`render`]: serde_yaml is archived
//! upstream, and this keeps swapping it a one-file change.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, ConfigErrors};

/// The whole of cells.yaml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    pub version: u32,
    /// Position + 1 is the region digit `R` of envelope IDs.
    pub regions: Vec<String>,
    pub cells: Vec<CellDoc>,
    pub epochs: Vec<EpochDoc>,
    pub minting: MintingDoc,
    #[serde(default, skip_serializing_if = "DegradeDoc::is_empty")]
    pub degrade: DegradeDoc,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellDoc {
    pub name: String,
    pub region: String,
    /// `active | failed | draining`
    pub status: String,
    /// Logic servers, `host:port`.
    pub servers: Vec<String>,
    /// The cell's order database, `postgres://user@host:port/database`.
    pub db: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochDoc {
    pub id: u32,
    /// region -> cell -> ranges (`"000-332"` or `"000-099,500-599"`).
    pub ranges: IndexMap<String, IndexMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintingDoc {
    /// The epoch new IDs are minted under.
    pub epoch: u32,
    /// Sender region -> region whose cells mint for it (a drained region).
    #[serde(default)]
    pub region_override: IndexMap<String, String>,
    /// Set by `cellctl switch` (with `switched_at`): the epoch minted before
    /// the switch, which `cellctl reverse` returns to. Absent when no switch
    /// is in progress (never switched, reversed, or completed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched_from: Option<u32>,
    /// When that switch was applied, RFC 3339 UTC (`2026-01-22T08:00:00Z`):
    /// `cellctl complete` refuses until the soak time has passed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched_at: Option<String>,
}

/// Runtime switches that shed optional work under load. An absent switch is
/// `on` (nothing shed), so a file lists only what is degraded now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DegradeDoc {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryDegradeDoc>,
    /// `claims: off` answers Get without the envelope's claim list (`on` is
    /// the default). A string, so that a bad value is a collected error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<String>,
}

impl DegradeDoc {
    pub fn is_empty(&self) -> bool {
        self.history.is_none() && self.claims.is_none()
    }
}

/// `history: off` (or `on`), or `history: { pages: N }` to serve at most N pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HistoryDegradeDoc {
    Switch(String),
    Pages { pages: u32 },
}

/// Keys each mapping of the file may hold; anything else is an error naming it.
const ROOT_KEYS: &[&str] = &[
    "version", "regions", "cells", "epochs", "minting", "degrade",
];
const CELL_KEYS: &[&str] = &["name", "region", "status", "servers", "db"];
const EPOCH_KEYS: &[&str] = &["id", "ranges"];
const MINTING_KEYS: &[&str] = &["epoch", "region_override", "switched_from", "switched_at"];
const DEGRADE_KEYS: &[&str] = &["history", "claims"];
const HISTORY_KEYS: &[&str] = &["pages"];

/// Parses cells.yaml text. Syntax and type errors carry the parser's line and path;
/// unknown keys are all collected (they are the usual typo) before the typed parse.
pub fn parse(text: &str) -> Result<Document, ConfigErrors> {
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|error| ConfigErrors::one(yaml_error(&error)))?;
    let mut errors = Vec::new();
    unknown_keys(&value, &mut errors);

    match serde_yaml::from_str::<Document>(text) {
        Ok(document) if errors.is_empty() => Ok(document),
        Ok(_) => Err(ConfigErrors(errors)),
        Err(error) => {
            errors.push(yaml_error(&error));
            Err(ConfigErrors(errors))
        }
    }
}

/// Renders a document as cells.yaml text (used by commands that rewrite the file).
pub fn render(document: &Document) -> Result<String, ConfigErrors> {
    serde_yaml::to_string(document).map_err(|error| {
        ConfigErrors::one(ConfigError::new("", format!("cannot render YAML: {error}")))
    })
}

/// serde_yaml's messages already start with the path (`minting.epoch: invalid
/// type ...`) and end with " at line L column C"; the line is carried as a field.
fn yaml_error(error: &serde_yaml::Error) -> ConfigError {
    let message = error.to_string();
    let message = message
        .split(" at line ")
        .next()
        .unwrap_or(&message)
        .to_owned();
    let mut config_error = ConfigError::new("", message);
    config_error.line = error.location().map(|location| location.line());
    config_error
}

fn unknown_keys(root: &serde_yaml::Value, errors: &mut Vec<ConfigError>) {
    check_keys(root, "", ROOT_KEYS, errors);
    for (index, cell) in sequence(root, "cells").iter().enumerate() {
        check_keys(cell, &format!("cells[{index}]"), CELL_KEYS, errors);
    }
    for (index, epoch) in sequence(root, "epochs").iter().enumerate() {
        check_keys(epoch, &format!("epochs[{index}]"), EPOCH_KEYS, errors);
    }
    if let Some(minting) = root.get("minting") {
        check_keys(minting, "minting", MINTING_KEYS, errors);
    }
    if let Some(degrade) = root.get("degrade") {
        check_keys(degrade, "degrade", DEGRADE_KEYS, errors);
        if let Some(history) = degrade.get("history") {
            check_keys(history, "degrade.history", HISTORY_KEYS, errors);
        }
    }
}

fn sequence<'a>(value: &'a serde_yaml::Value, key: &str) -> &'a [serde_yaml::Value] {
    value
        .get(key)
        .and_then(serde_yaml::Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn check_keys(
    value: &serde_yaml::Value,
    path: &str,
    known: &[&str],
    errors: &mut Vec<ConfigError>,
) {
    let Some(mapping) = value.as_mapping() else {
        return; // a wrong type is reported by the typed parse, with its line
    };
    for key in mapping.keys() {
        let name = match key.as_str() {
            Some(name) => name.to_owned(),
            None => format!("{key:?}"),
        };
        if !known.contains(&name.as_str()) {
            let at = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            errors.push(ConfigError::new(
                at,
                format!("unknown key (expected one of: {})", known.join(", ")),
            ));
        }
    }
}
