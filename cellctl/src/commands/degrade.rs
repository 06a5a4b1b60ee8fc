//! `cellctl degrade KEY=VALUE [KEY=VALUE ...]` (issue 11 item 5): the runtime
//! switches of cells.yaml's `degrade:` that shed optional work during a peak,
//! set through the change module (diff, `--apply`, the fleet picks the file
//! up without a restart: routers read the switches per request).
//!
//! Switches: `history=off|on` and `history.pages=N` (History refused, or
//! served to N pages), `claims=off|on` (Get answers the envelope without its
//! claim list, marked degraded). `=on` removes the switch from the file, since
//! on is the default, so the file lists only what is degraded now. A bad key
//! or value is refused before the file is read, naming it and listing the
//! valid switches; `history.pages=0` is refused by the plan's validation
//! (`degrade.history.pages`), the one place that rule lives.

use std::{io::Write, path::Path};

use redcell_topology::{ClaimsMode, HistoryMode, plan::DegradeSwitch};

use super::change::{self, ChangeArgs};
use crate::CommandError;

/// What an operator may type, for every refusal.
pub const VALID: &str = "history=on|off, history.pages=N, claims=on|off";

/// One `KEY=VALUE` argument, or why not (naming it).
pub fn parse_switch(text: &str) -> Result<DegradeSwitch, String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(format!("{text:?} is not KEY=VALUE (valid: {VALID})"));
    };
    let on_off = |on, off| match value {
        "on" => Ok(on),
        "off" => Ok(off),
        _ => Err(format!(
            "{key}: expected on or off, not {value:?} (valid: {VALID})"
        )),
    };
    match key {
        "history" => on_off(
            DegradeSwitch::History(HistoryMode::On),
            DegradeSwitch::History(HistoryMode::Off),
        ),
        "history.pages" => value
            .parse::<u32>()
            .map(|pages| DegradeSwitch::History(HistoryMode::Pages(pages)))
            .map_err(|_| {
                format!("history.pages: expected a number of pages, not {value:?} (valid: {VALID})")
            }),
        "claims" => on_off(
            DegradeSwitch::Claims(ClaimsMode::On),
            DegradeSwitch::Claims(ClaimsMode::Off),
        ),
        _ => Err(format!("unknown switch {key:?} (valid: {VALID})")),
    }
}

/// `cellctl degrade KEY=VALUE... [--apply]`.
pub fn run(
    path: &Path,
    switches: &[String],
    args: &ChangeArgs,
    out: &mut impl Write,
) -> Result<(), CommandError> {
    let parsed = switches
        .iter()
        .map(|text| parse_switch(text))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| CommandError::Input(format!("cannot degrade: {error}")))?;
    change::run(
        path,
        &format!("degrade {}", switches.join(" ")),
        args,
        |topology| redcell_topology::plan::degrade(topology, &parsed),
        out,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parses_every_switch_and_names_what_is_wrong() {
        assert_eq!(
            parse_switch("history=off").unwrap(),
            DegradeSwitch::History(HistoryMode::Off)
        );
        assert_eq!(
            parse_switch("history.pages=3").unwrap(),
            DegradeSwitch::History(HistoryMode::Pages(3))
        );
        assert_eq!(
            parse_switch("claims=on").unwrap(),
            DegradeSwitch::Claims(ClaimsMode::On)
        );
        for (text, names) in [
            ("claims", "\"claims\" is not KEY=VALUE"),
            ("claim=off", "unknown switch \"claim\""),
            ("claims=Off", "claims: expected on or off, not \"Off\""),
            ("history=", "history: expected on or off, not \"\""),
            ("history.pages=-1", "history.pages: expected a number"),
            (
                "history.pages=99999999999",
                "history.pages: expected a number",
            ),
        ] {
            let error = parse_switch(text).unwrap_err();
            assert!(error.starts_with(names), "{text}: {error}");
            assert!(error.ends_with(&format!("(valid: {VALID})")), "{error}");
        }
    }
}
