//! The lock that keeps a second daemon off an embedded journal.
//!
//! In: the journal's path, when `serve` (or `journal recover`) starts. Out: a [`JournalLock`]
//! held for as long as the process works on that journal, or an error naming why it cannot be
//! taken. SQLite's own locking keeps concurrent transactions safe; this lock keeps two daemons
//! from both believing they own the pending events (and the Redis claims named after the
//! journal's id).

use std::path::Path;

use super::JournalError;

/// Proof that this process is the only daemon working on one journal: an exclusive `flock` on
/// `{journal}.lock`, released when dropped or when the process dies, however it dies.
#[derive(Debug)]
pub(crate) struct JournalLock {
    _file: std::fs::File,
}

impl JournalLock {
    /// Takes the lock of the journal at `path`, or says which process class holds it. Tools
    /// that only read or replay dead letters (which SQLite's own locking keeps safe) do not take it.
    pub(crate) fn acquire(path: &Path) -> Result<JournalLock, JournalError> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = std::path::PathBuf::from(lock_path);
        if let Some(dir) = lock_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                JournalError::Storage(format!(
                    "cannot create storage directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                JournalError::Storage(format!("cannot open {}: {e}", lock_path.display()))
            })?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| {
                JournalError::Storage(if e == rustix::io::Errno::WOULDBLOCK {
                    format!(
                        "the journal {} is in use by another attio-webhooks daemon (one daemon \
                         per storage.path; replicas share queue.backend = \"redis\" instead)",
                        path.display()
                    )
                } else {
                    format!("cannot lock {}: {e}", lock_path.display())
                })
            },
        )?;
        Ok(JournalLock { _file: file })
    }
}
