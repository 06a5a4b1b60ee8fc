//! One server per test process: [`shared`].
//!
//! Each `#[tokio::test]` runs on its own runtime, and the first to call
//! [`shared`] starts the server inside its runtime. That is safe because a
//! [`PgServer`] stores nothing bound to a runtime (see [`crate::server`]):
//! later tests, on other runtimes, connect through it with connection tasks
//! of their own.
//!
//! Statics are never dropped, so `Drop` cannot stop this server. Instead its
//! postmaster pid and directory are recorded here and an `atexit(3)` hook
//! stops the server and removes the directory when the test binary exits
//! (libtest ends through `exit`, also after failures). A test binary killed
//! outright skips the hook; the next run's sweep (see
//! [`crate::server_dirs`]) cleans up after it.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::OnceCell;

use crate::error::HarnessError;
use crate::server::PgServer;
use redcell_pgsys::{process_tree, sys};

use crate::server_dirs;

/// How long the exit hook waits for an immediate shutdown before SIGKILL.
const EXIT_GRACE: Duration = Duration::from_secs(3);

static SHARED: OnceCell<PgServer> = OnceCell::const_new();

/// What the exit hook must clean up: the shared server's postmaster and
/// directory.
static AT_EXIT: Mutex<Option<ExitCleanup>> = Mutex::new(None);

#[derive(Debug)]
struct ExitCleanup {
    postmaster: u32,
    dir: PathBuf,
}

/// The process-wide server, started on first use. Use one database per test
/// on it ([`PgServer::ensure_template`] + [`PgServer::clone_database`]).
pub async fn shared() -> Result<&'static PgServer, HarnessError> {
    SHARED
        .get_or_try_init(|| async {
            let server = PgServer::start().await?;
            clean_up_at_exit(&server)?;
            Ok(server)
        })
        .await
}

fn clean_up_at_exit(server: &PgServer) -> Result<(), HarnessError> {
    let Some(postmaster) = server.pid() else {
        return Err(HarnessError::Io {
            context: "registering the shared server for cleanup".to_owned(),
            source: std::io::Error::other("the shared server is not running"),
        });
    };
    let cleanup = ExitCleanup {
        postmaster,
        dir: server.base_dir().to_path_buf(),
    };
    *AT_EXIT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(cleanup);
    sys::run_at_exit(stop_shared_at_exit).map_err(HarnessError::io("registering the exit hook"))
}

/// The `atexit(3)` hook. It must not unwind (that would abort the process):
/// nothing in it panics, and a poisoned lock is still read.
extern "C" fn stop_shared_at_exit() {
    let cleanup = AT_EXIT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    if let Some(ExitCleanup { postmaster, dir }) = cleanup {
        // The postmaster is our child, held by the never-dropped static:
        // reap it here, or it would never stop counting as alive.
        process_tree::end_postmaster(postmaster, EXIT_GRACE, &mut || {
            sys::reap_child_if_exited(postmaster)
        });
        server_dirs::remove(&dir);
    }
}
