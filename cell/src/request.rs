//! Wire requests -> validated commands (DESIGN.md §8). Wire types stop here: the
//! operations only see values that passed these checks, and every violation is
//! an `INVALID_ARGUMENT` naming its field, raised before anything is written.

use redcell_proto::v1 as pb;
use redcell_topology::EnvelopeId;

use crate::{error::CellError, kind::Kind, store::HistoryKind};

/// Input limits; defaults per DESIGN.md §8, configurable per cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_count: u32,
    pub max_total_cents: i64,
    pub max_greeting_chars: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_count: 500,
            max_total_cents: 2_000_000,
            max_greeting_chars: 64,
        }
    }
}

/// A user id: 1-64 of `[A-Za-z0-9_-]` (also the ledger account name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    pub fn parse(field: &'static str, text: &str) -> Result<UserId, CellError> {
        check_token(field, text)?;
        Ok(UserId(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// 1-64 of `[A-Za-z0-9_-]`: user ids and idempotency keys.
fn check_token(field: &'static str, text: &str) -> Result<(), CellError> {
    // Characters first: once they are all ASCII, bytes and characters agree.
    if let Some(bad) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(CellError::invalid(
            field,
            format!("{bad:?} is not allowed; use only A-Z a-z 0-9 _ -"),
        ));
    }
    if text.is_empty() || text.len() > 64 {
        return Err(CellError::invalid(
            field,
            format!("must be 1-64 characters, got {}", text.len()),
        ));
    }
    Ok(())
}

/// Free text stored in a PostgreSQL `text` column (the greeting). A protobuf
/// `string` is valid UTF-8 by the time it gets here (the codec refuses anything
/// else before a handler runs), and in a UTF8 database PostgreSQL stores every
/// Unicode scalar value except one: NUL, which `text` cannot hold (SQLSTATE
/// 22021). Refused here, naming the field, instead of surfacing as INTERNAL
/// after the statement failed.
fn check_text(field: &'static str, text: &str) -> Result<(), CellError> {
    if let Some(position) = text.chars().position(|c| c == '\0') {
        return Err(CellError::invalid(
            field,
            format!(
                "must not contain the NUL character (U+0000), found at character {}",
                position + 1
            ),
        ));
    }
    Ok(())
}

/// A validated Send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendCommand {
    pub sender: UserId,
    pub total_cents: i64,
    pub count: u32,
    pub kind: Kind,
    pub greeting: String,
    pub recipients: Vec<UserId>,
    pub idempotency_key: String,
}

impl SendCommand {
    pub fn parse(
        sender: UserId,
        request: pb::SendRequest,
        limits: &Limits,
    ) -> Result<SendCommand, CellError> {
        let pb::SendRequest {
            total_cents,
            count,
            kind,
            greeting,
            recipients,
            idempotency_key,
        } = request;
        if total_cents < 1 {
            return Err(CellError::invalid(
                "total_cents",
                format!("must be at least 1 cent, got {total_cents}"),
            ));
        }
        if total_cents > limits.max_total_cents {
            return Err(CellError::invalid(
                "total_cents",
                format!(
                    "must be at most {} cents, got {total_cents}",
                    limits.max_total_cents
                ),
            ));
        }
        if count < 1 || count > limits.max_count {
            return Err(CellError::invalid(
                "count",
                format!("must be 1-{}, got {count}", limits.max_count),
            ));
        }
        if total_cents < i64::from(count) {
            return Err(CellError::invalid(
                "total_cents",
                format!("{total_cents} cents cannot make {count} shares of at least 1 cent"),
            ));
        }
        let kind = Kind::try_from(kind).map_err(|wire| {
            CellError::invalid(
                "kind",
                format!("must be LUCKY, EQUAL or EXCLUSIVE, got {wire}"),
            )
        })?;
        let greeting_chars = greeting.chars().count();
        if greeting_chars > limits.max_greeting_chars {
            return Err(CellError::invalid(
                "greeting",
                format!(
                    "must be at most {} characters, got {greeting_chars}",
                    limits.max_greeting_chars
                ),
            ));
        }
        check_text("greeting", &greeting)?;
        let recipients = recipients
            .iter()
            .map(|recipient| UserId::parse("recipients", recipient))
            .collect::<Result<Vec<_>, _>>()?;
        // Every kind listed, no `_` arm: a new kind must say what it allows.
        match kind {
            Kind::Lucky => no_recipients(&recipients)?,
            Kind::Equal => {
                let remainder = total_cents % i64::from(count);
                if remainder != 0 {
                    return Err(CellError::invalid(
                        "total_cents",
                        format!(
                            "EQUAL needs a total divisible by count: {total_cents} % {count} = {remainder}"
                        ),
                    ));
                }
                no_recipients(&recipients)?;
            }
            Kind::Exclusive => {
                if count != 1 {
                    return Err(CellError::invalid(
                        "count",
                        format!("EXCLUSIVE has exactly 1 share, got {count}"),
                    ));
                }
                if recipients.len() != 1 {
                    return Err(CellError::invalid(
                        "recipients",
                        format!(
                            "EXCLUSIVE needs exactly 1 recipient, got {}",
                            recipients.len()
                        ),
                    ));
                }
                if recipients.first() == Some(&sender) {
                    return Err(CellError::invalid(
                        "recipients",
                        "cannot send an EXCLUSIVE envelope to yourself",
                    ));
                }
            }
        }
        check_token("idempotency_key", &idempotency_key)?;
        Ok(SendCommand {
            sender,
            total_cents,
            count,
            kind,
            greeting,
            recipients,
            idempotency_key,
        })
    }
}

/// LUCKY and EQUAL envelopes are open to anyone: they name no recipients.
fn no_recipients(recipients: &[UserId]) -> Result<(), CellError> {
    if recipients.is_empty() {
        Ok(())
    } else {
        Err(CellError::invalid(
            "recipients",
            "only EXCLUSIVE envelopes name recipients",
        ))
    }
}

/// Parses an envelope ID field (`INVALID_ARGUMENT` naming the field).
pub fn parse_envelope_id(text: &str) -> Result<EnvelopeId, CellError> {
    text.parse().map_err(|error: redcell_topology::IdError| {
        CellError::invalid("envelope_id", error.to_string())
    })
}

/// A validated Get: the envelope (not yet checked to be this cell's), the
/// position after which its claims are listed, and the page size asked for
/// (resolved against the limit by the operation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetQuery {
    pub envelope_id: EnvelopeId,
    pub after: u32,
    pub page_size: u32,
}

impl TryFrom<pb::GetRequest> for GetQuery {
    type Error = CellError;

    fn try_from(request: pb::GetRequest) -> Result<GetQuery, CellError> {
        Ok(GetQuery {
            envelope_id: parse_envelope_id(&request.envelope_id)?,
            after: parse_page_token(&request.page_token)?,
            page_size: request.page_size,
        })
    }
}

/// A CellHistory request, checked at the edge: whose history, which way,
/// where the slice starts, and the slice size asked for (resolved against the
/// limit by the operation, as Get's page size is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    pub user: UserId,
    pub kind: HistoryKind,
    pub cursor: HistoryCursor,
    pub limit: u32,
}

impl TryFrom<pb::CellHistoryRequest> for HistoryQuery {
    type Error = CellError;

    fn try_from(request: pb::CellHistoryRequest) -> Result<HistoryQuery, CellError> {
        let kind = match pb::HistoryDirection::try_from(request.direction) {
            Ok(pb::HistoryDirection::Sent) => HistoryKind::Sent,
            Ok(pb::HistoryDirection::Received) => HistoryKind::Received,
            Ok(pb::HistoryDirection::Unspecified) | Err(_) => {
                return Err(CellError::invalid("direction", "must be SENT or RECEIVED"));
            }
        };
        Ok(HistoryQuery {
            user: UserId::parse("user", &request.user)?,
            kind,
            // No cursor: everything. Bounded here: an out-of-range time would
            // overflow the driver's encoding, a NUL would reach SQL.
            cursor: HistoryCursor::parse(request.before, &request.before_id)?,
            limit: request.limit,
        })
    }
}

/// The position a CellHistory slice starts after: entries strictly older than
/// (`before`, `before_id`). Both come from the router's decoded page token, so
/// both are client input: checked here so that neither reaches PostgreSQL
/// unvalidated (a NUL in `before_id` would fail the query as INTERNAL; a
/// `before` past `u64::MAX` microseconds overflows the driver's timestamp
/// encoding, a panic in a debug build and a wrapped time in a release one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryCursor {
    pub before: std::time::SystemTime,
    pub before_id: String,
}

/// 9999-12-31T23:59:59Z: the end of the cursor range (and "no cursor").
const LAST_SECOND: i64 = 253_402_300_799;

impl HistoryCursor {
    /// `None` / empty: the first slice (everything).
    pub fn parse(
        before: Option<prost_types::Timestamp>,
        before_id: &str,
    ) -> Result<HistoryCursor, CellError> {
        let before = match before {
            None => std::time::UNIX_EPOCH + std::time::Duration::from_secs(LAST_SECOND as u64),
            Some(timestamp) => {
                let seconds = timestamp.seconds;
                if !(0..=LAST_SECOND).contains(&seconds)
                    || !(0..1_000_000_000).contains(&timestamp.nanos)
                {
                    return Err(CellError::invalid(
                        "before",
                        format!(
                            "must be a time from 1970-01-01 to 9999-12-31, got {seconds} s {} ns",
                            timestamp.nanos
                        ),
                    ));
                }
                std::time::SystemTime::try_from(timestamp)
                    .map_err(|_| CellError::invalid("before", "is not a valid timestamp"))?
            }
        };
        let before_id = if before_id.is_empty() {
            "9".repeat(23)
        } else if before_id.len() <= 23 && before_id.bytes().all(|b| b.is_ascii_digit()) {
            before_id.to_owned()
        } else {
            return Err(CellError::invalid(
                "before_id",
                "must be an envelope id (digits only, at most 23)",
            ));
        };
        Ok(HistoryCursor { before, before_id })
    }
}

/// An opaque page token: the last position served (0 = first page).
pub fn parse_page_token(text: &str) -> Result<u32, CellError> {
    if text.is_empty() {
        return Ok(0);
    }
    text.parse().map_err(|_| {
        // Echoed only when short: the message travels in the `grpc-message`
        // header, and a long echo (a hostile 40 KB token) went past the
        // router's header list limit, which failed the call as an HTTP/2
        // protocol error (UNAVAILABLE) instead of this INVALID_ARGUMENT.
        let shown = if text.len() <= 64 {
            format!("{text:?}")
        } else {
            format!("a {}-byte string", text.len())
        };
        CellError::invalid(
            "page_token",
            format!("{shown} is not a token this server issued"),
        )
    })
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    fn code(error: CellError) -> String {
        error.to_string()
    }

    #[test]
    fn greeting_with_nul_is_refused_naming_the_field() {
        let request = pb::SendRequest {
            total_cents: 100,
            count: 1,
            kind: pb::EnvelopeKind::Lucky.into(),
            greeting: "a\0b".into(),
            recipients: Vec::new(),
            idempotency_key: "k".into(),
        };
        let sender = UserId::parse("user", "alice").map_err(code);
        let refused = sender.and_then(|sender| {
            SendCommand::parse(sender, request, &Limits::default()).map_err(code)
        });
        assert_eq!(
            refused,
            Err(
                "greeting: must not contain the NUL character (U+0000), found at character 2"
                    .into()
            )
        );
    }

    /// Each kind's own rules, each refusal naming its field: the table the
    /// exhaustive match in [`SendCommand::parse`] must keep answering.
    #[test]
    fn each_kind_is_held_to_its_own_rules() {
        let send = |kind: pb::EnvelopeKind, total_cents, count, recipients: &[&str]| {
            let request = pb::SendRequest {
                total_cents,
                count,
                kind: kind.into(),
                greeting: String::new(),
                recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
                idempotency_key: "k".into(),
            };
            let sender = UserId::parse("user", "alice").map_err(code)?;
            SendCommand::parse(sender, request, &Limits::default())
                .map(|command| command.kind)
                .map_err(|error| match error {
                    CellError::InvalidArgument { field, .. } => field.to_owned(),
                    other => code(other),
                })
        };
        use pb::EnvelopeKind::{Equal, Exclusive, Lucky, Unspecified};
        assert_eq!(send(Lucky, 100, 3, &[]), Ok(Kind::Lucky));
        assert_eq!(send(Lucky, 100, 3, &["bob"]), Err("recipients".into()));
        assert_eq!(send(Equal, 99, 3, &[]), Ok(Kind::Equal));
        assert_eq!(send(Equal, 100, 3, &[]), Err("total_cents".into()));
        assert_eq!(send(Equal, 99, 3, &["bob"]), Err("recipients".into()));
        assert_eq!(send(Exclusive, 100, 1, &["bob"]), Ok(Kind::Exclusive));
        assert_eq!(send(Exclusive, 100, 2, &["bob"]), Err("count".into()));
        assert_eq!(send(Exclusive, 100, 1, &[]), Err("recipients".into()));
        assert_eq!(
            send(Exclusive, 100, 1, &["bob", "carol"]),
            Err("recipients".into())
        );
        assert_eq!(
            send(Exclusive, 100, 1, &["alice"]),
            Err("recipients".into())
        );
        assert_eq!(send(Unspecified, 100, 1, &[]), Err("kind".into()));
    }

    #[test]
    fn a_get_is_parsed_at_the_edge_naming_each_bad_field() {
        let get = |envelope_id: &str, page_token: &str| {
            GetQuery::try_from(pb::GetRequest {
                envelope_id: envelope_id.into(),
                page_token: page_token.into(),
                page_size: 7,
            })
            .map_err(|error| match error {
                CellError::InvalidArgument { field, .. } => field,
                _ => "not INVALID_ARGUMENT",
            })
        };
        let id = "2601221000000481516742";
        let query = get(id, "12");
        assert_eq!(query.as_ref().map(|q| (q.after, q.page_size)), Ok((12, 7)));
        assert_eq!(query.map(|q| q.envelope_id.to_string()), Ok(id.to_owned()));
        assert_eq!(get(id, "").map(|q| q.after), Ok(0));
        assert_eq!(get("42", "").map(|q| q.after), Err("envelope_id"));
        assert_eq!(get(id, "abc").map(|q| q.after), Err("page_token"));
    }

    #[test]
    fn history_cursor_refuses_what_postgres_cannot_take() {
        let at = |seconds, nanos| Some(prost_types::Timestamp { seconds, nanos });
        for (before, id, field) in [
            (at(i64::MAX, 0), "", "before"),
            (at(LAST_SECOND + 1, 0), "", "before"),
            (at(-1, 0), "", "before"),
            (at(0, -1), "", "before"),
            (None, "12\u{0}4", "before_id"),
            (None, "9".repeat(24).leak() as &str, "before_id"),
            (None, "2601221000000481516x42", "before_id"),
        ] {
            match HistoryCursor::parse(before, id) {
                Err(CellError::InvalidArgument { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{before:?} {id:?}: {other:?}"),
            }
        }
        let first = HistoryCursor::parse(None, "").map_err(code);
        assert_eq!(first.map(|cursor| cursor.before_id), Ok("9".repeat(23)));
        let page = HistoryCursor::parse(at(LAST_SECOND, 999_999_999), "2601221000000481516742");
        assert!(page.is_ok(), "{page:?}");
    }
}
