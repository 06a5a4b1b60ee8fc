//! The account the server runs as.
//!
//! PostgreSQL refuses to start as root (`"root" execution of the PostgreSQL
//! server is not permitted`), and CI and containers often run tests as root.
//! So when this process is root, `initdb` and `postgres` are spawned as an
//! unprivileged user (`postgres`, or `REDCELL_PG_USER`) through
//! [`std::os::unix::process::CommandExt::uid`]/`gid`; std also drops the
//! supplementary groups when root switches uid this way. Everything the
//! server touches (its directory, its copied data directory) is chowned to
//! that user. When this process is not root, the server simply runs as us.

use std::fs;
use std::os::unix::fs::{PermissionsExt, lchown};
use std::path::Path;

use crate::error::PgSysError;
use crate::sys;

/// Environment variable naming the account to run the server as when root.
pub const SERVER_USER_ENV: &str = "REDCELL_PG_USER";

/// An unprivileged account from `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl ServerUser {
    /// `None` when this process is not root (the server runs as us);
    /// otherwise the account named by `REDCELL_PG_USER`, or `postgres`.
    pub fn for_this_process() -> Result<Option<ServerUser>, PgSysError> {
        if sys::effective_uid() != 0 {
            return Ok(None);
        }
        let name = std::env::var(SERVER_USER_ENV)
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "postgres".to_owned());
        let passwd =
            fs::read_to_string("/etc/passwd").map_err(PgSysError::io("reading /etc/passwd"))?;
        lookup(&passwd, &name)
            .map(Some)
            .ok_or(PgSysError::ServerUserNotFound { user: name })
    }

    /// Uid the cluster files belong to: the server user's, or ours.
    pub fn owner_uid(user: Option<&ServerUser>) -> u32 {
        user.map_or_else(sys::effective_uid, |user| user.uid)
    }
}

/// Finds `name` in the text of an `/etc/passwd` file
/// (`name:password:uid:gid:gecos:home:shell`).
fn lookup(passwd: &str, name: &str) -> Option<ServerUser> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some(ServerUser {
            name: name.to_owned(),
            uid,
            gid,
        })
    })
}

/// Makes `path` a private (0700) directory of the server user.
pub fn make_private_dir(path: &Path, user: Option<&ServerUser>) -> Result<(), PgSysError> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))
        .map_err(PgSysError::io(format!("chmod 0700 {}", path.display())))?;
    if let Some(user) = user {
        lchown(path, Some(user.uid), Some(user.gid)).map_err(PgSysError::io(format!(
            "chown {} to {}",
            path.display(),
            user.name
        )))?;
    }
    Ok(())
}

/// Copies the tree at `from` to `to` (which must not exist), keeping file
/// modes, and gives every copied entry to `user` when there is one.
///
/// PostgreSQL insists on a 0700 (or 0750) data directory owned by the server
/// user, so both the modes and the owner matter.
pub fn copy_tree(from: &Path, to: &Path, user: Option<&ServerUser>) -> Result<(), PgSysError> {
    let meta =
        fs::symlink_metadata(from).map_err(PgSysError::io(format!("stat {}", from.display())))?;
    let file_type = meta.file_type();
    if file_type.is_dir() {
        fs::create_dir(to).map_err(PgSysError::io(format!("mkdir {}", to.display())))?;
        let entries =
            fs::read_dir(from).map_err(PgSysError::io(format!("listing {}", from.display())))?;
        for entry in entries {
            let entry = entry.map_err(PgSysError::io(format!("listing {}", from.display())))?;
            copy_tree(&entry.path(), &to.join(entry.file_name()), user)?;
        }
        fs::set_permissions(to, meta.permissions())
            .map_err(PgSysError::io(format!("chmod {}", to.display())))?;
    } else if file_type.is_symlink() {
        let target =
            fs::read_link(from).map_err(PgSysError::io(format!("readlink {}", from.display())))?;
        std::os::unix::fs::symlink(&target, to)
            .map_err(PgSysError::io(format!("symlink {}", to.display())))?;
    } else {
        // fs::copy also copies the permission bits.
        fs::copy(from, to).map_err(PgSysError::io(format!(
            "copying {} to {}",
            from.display(),
            to.display()
        )))?;
    }
    if let Some(user) = user {
        lchown(to, Some(user.uid), Some(user.gid)).map_err(PgSysError::io(format!(
            "chown {} to {}",
            to.display(),
            user.name
        )))?;
    }
    Ok(())
}
