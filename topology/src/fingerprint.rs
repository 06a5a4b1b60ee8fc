//! [`Topology::fingerprint`]: a short name for "this exact topology", so an
//! operator (`cellctl status`) can tell whether every process serves the
//! cells.yaml on disk after a live reload.

use crate::Topology;

impl Topology {
    /// 16 hex digits: FNV-1a 64 of the canonical rendering of the document
    /// (formatting and comments of the file do not count; every value does).
    /// Equal topologies have equal fingerprints; it is a label, not a MAC.
    pub fn fingerprint(&self) -> String {
        let text = self.to_yaml().unwrap_or_default();
        let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("{hash:016x}")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::Topology;

    const TEXT: &str = r#"version: 1
regions: [north]
cells:
  - name: n1
    region: north
    status: active
    servers: ["127.0.0.1:7101"]
    db: "postgres://redcell@127.0.0.1:5432/n1"
epochs:
  - id: 0
    ranges:
      north: { n1: "000-999" }
minting:
  epoch: 0
"#;

    #[test]
    fn equal_topologies_match_and_any_change_shows() {
        let one = Topology::parse(TEXT).unwrap();
        let reformatted = Topology::parse(&format!("# a comment\n{TEXT}")).unwrap();
        let changed = Topology::parse(&TEXT.replace("127.0.0.1:7101", "127.0.0.1:7102")).unwrap();
        assert_eq!(one.fingerprint().len(), 16);
        assert_eq!(one.fingerprint(), reformatted.fingerprint());
        assert_ne!(one.fingerprint(), changed.fingerprint());
    }
}
