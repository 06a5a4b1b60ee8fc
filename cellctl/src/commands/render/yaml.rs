//! Manifests as YAML text: the one place `render` calls serde_yaml (archived
//! upstream, as the topology crate notes; swapping it is a one-file change).
//!
//! Output is deterministic: k8s-openapi and the CloudNativePG model keep maps
//! in `BTreeMap`s (sorted keys) and fields in declaration order, and a file
//! lists its documents in the order the renderer adds them.

use serde::{Serialize, de::DeserializeOwned};

/// The first line of every file `render` writes; `render` removes a file of
/// its output directory only when it starts with this line (its own, from an
/// earlier render) and is no longer rendered.
pub const MARKER: &str = "# Rendered by `cellctl render k8s` from cells.yaml.";

/// A file of YAML documents, built one object at a time.
#[derive(Debug, Default)]
pub struct Documents {
    text: String,
    kinds: Vec<String>,
}

impl Documents {
    /// Starts a file with the marker and a line saying what it holds.
    pub fn new(about: &str) -> Documents {
        Documents {
            text: format!(
                "{MARKER}\n# Do not edit: change cells.yaml (or the flags) and render again.\n# {about}\n"
            ),
            kinds: Vec::new(),
        }
    }

    /// Appends one object as its own document.
    pub fn push<T: Serialize>(&mut self, kind: &str, object: &T) -> Result<(), String> {
        let yaml = to_text(kind, object)?;
        self.text.push_str("---\n");
        self.text.push_str(&yaml);
        self.kinds.push(kind.to_owned());
        Ok(())
    }

    /// The kinds of the documents, in order (for the report).
    pub fn kinds(&self) -> &[String] {
        &self.kinds
    }

    pub fn into_text(self) -> String {
        self.text
    }
}

/// One object as a YAML document (without a leading `---`).
pub fn to_text<T: Serialize>(what: &str, object: &T) -> Result<String, String> {
    serde_yaml::to_string(object).map_err(|error| format!("cannot render {what} as YAML: {error}"))
}

/// One YAML document read into `T`; the error names the path of the offending
/// field and its line.
pub fn from_text<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_yaml::from_str(text).map_err(|error| error.to_string())
}
