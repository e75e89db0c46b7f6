//! The `jsonl` and `stdout` sinks: one JSON object per line, written by a dedicated thread.
//!
//! In: lines from the worker, and requests to reopen the file (SIGHUP). Out: each line answered
//! once it reached the operating system, or with the write's error. The thread writes everything
//! queued, flushes once, then answers each caller; a line is acknowledged only after it reached
//! the operating system (a process crash cannot lose it).
//!
//! A file sink keeps every acknowledged line whole and in the file its path names:
//! - a write that fails (a full disk) is cut back to the file's length before it, so the retry
//!   starts on a clean line instead of after a fragment; if even the cut fails, the next write
//!   starts on a new line, leaving the fragment a line of its own that readers can skip;
//! - a process killed in the middle of a write can leave a torn last line; on open such a file
//!   gets its missing newline, for the same reason;
//! - the file is reopened on request (SIGHUP, the log-rotation convention), and before writing,
//!   at most every [`IDENTITY_CHECK_EVERY`], the path is looked up again: when it no longer names
//!   the open file (moved or deleted: its device and inode differ, or it is gone), the path is
//!   opened afresh, so lines never keep going to a rotated or deleted file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::SinkError;

const QUEUE_DEPTH: usize = 8192;
const MAX_BATCH: usize = 4096;

/// How often, at most, a file sink checks that its path still names the file it has open.
pub(crate) const IDENTITY_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Where a line's outcome goes.
type Answer = oneshot::Sender<Result<(), String>>;

enum Job {
    Line(Bytes, Answer),
    /// Wakes the thread up to reopen its file (the request itself is the shared flag).
    Reopen,
}

#[derive(Clone)]
pub(crate) struct LineWriter {
    jobs: mpsc::Sender<Job>,
    /// Set by [`LineWriter::reopen`], taken by the writing thread.
    reopen: Arc<AtomicBool>,
}

impl LineWriter {
    pub(crate) fn append_to_file(path: &Path) -> std::io::Result<LineWriter> {
        let file = AppendFile::open(path)?;
        Self::spawn(Output::File(file), "sink-jsonl")
    }

    pub(crate) fn stdout() -> LineWriter {
        // Spawning a thread only fails when the process is out of resources; the stdout sink
        // then degrades to reporting errors for every line.
        Self::spawn(Output::Stdout(std::io::stdout()), "sink-stdout").unwrap_or_else(|_| {
            let (jobs, _) = mpsc::channel(1);
            LineWriter {
                jobs,
                reopen: Arc::default(),
            }
        })
    }

    fn spawn(output: Output, name: &str) -> std::io::Result<LineWriter> {
        let (jobs, receiver) = mpsc::channel(QUEUE_DEPTH);
        let reopen = Arc::new(AtomicBool::new(false));
        let requested = reopen.clone();
        crate::threads::spawn_helper(name, move || write_loop(output, receiver, &requested))?;
        Ok(LineWriter { jobs, reopen })
    }

    pub(crate) async fn write_line(&self, line: Bytes) -> Result<(), SinkError> {
        let (done, wait) = oneshot::channel();
        self.jobs
            .send(Job::Line(line, done))
            .await
            .map_err(|_| SinkError::transient("sink writer stopped"))?;
        wait.await
            .map_err(|_| SinkError::transient("sink writer stopped"))?
            .map_err(SinkError::transient)
    }

    /// Asks the writer to close its file and open its path again, before its next write (at
    /// once when idle). Does not wait. The stdout sink has nothing to reopen.
    pub(crate) fn reopen(&self) {
        self.reopen.store(true, Ordering::SeqCst);
        // A full queue means the thread is busy and sees the flag before its next batch.
        let _ = self.jobs.try_send(Job::Reopen);
    }
}

enum Output {
    File(AppendFile),
    Stdout(std::io::Stdout),
}

impl Output {
    fn write_batch(&mut self, buffer: &[u8], reopen: bool) -> Result<(), String> {
        match self {
            Output::File(file) => file.write_batch(buffer, reopen),
            Output::Stdout(stdout) => stdout
                .write_all(buffer)
                .and_then(|()| stdout.flush())
                .map_err(|e| format!("write failed: {e}")),
        }
    }

    fn reopen_now(&mut self) {
        if let Output::File(file) = self {
            if let Err(error) = file.reopen("reopen requested (SIGHUP)") {
                // Tried again before the next write, whose events wait until it works.
                tracing::warn!(path = %file.path.display(), %error, "cannot reopen the sink file");
            }
        }
    }
}

/// A file opened for appending, that knows which file its path named when it was opened.
struct AppendFile {
    path: PathBuf,
    /// `None` after a reopen failed: every write fails until the path can be opened.
    file: Option<File>,
    identity: Option<FileIdentity>,
    checked: Instant,
    /// A failed write left a fragment that could not be cut off: start the next on a new line.
    fragment: bool,
}

/// Device and inode: what a path names, as opposed to the path itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    device: u64,
    inode: u64,
}

impl FileIdentity {
    #[cfg(unix)]
    fn of(metadata: &std::fs::Metadata) -> Option<FileIdentity> {
        use std::os::unix::fs::MetadataExt;
        Some(FileIdentity {
            device: metadata.dev(),
            inode: metadata.ino(),
        })
    }

    #[cfg(not(unix))]
    fn of(_: &std::fs::Metadata) -> Option<FileIdentity> {
        None
    }
}

impl AppendFile {
    fn open(path: &Path) -> std::io::Result<AppendFile> {
        let (file, identity) = open_for_append(path)?;
        Ok(AppendFile {
            path: path.to_path_buf(),
            file: Some(file),
            identity,
            checked: Instant::now(),
            fragment: false,
        })
    }

    fn reopen(&mut self, reason: &str) -> std::io::Result<()> {
        // Closed first: a moved file is complete from here on, whatever happens next.
        self.file = None;
        self.identity = None;
        let (file, identity) = open_for_append(&self.path)?;
        tracing::info!(path = %self.path.display(), reason, "sink file reopened");
        self.file = Some(file);
        self.identity = identity;
        self.checked = Instant::now();
        self.fragment = false;
        Ok(())
    }

    /// Why the open file is no longer the one the path names, if it is not.
    fn moved_away(&self) -> Option<&'static str> {
        let open = self.identity?;
        match std::fs::metadata(&self.path) {
            Ok(metadata) if FileIdentity::of(&metadata) == Some(open) => None,
            Ok(_) => Some("the path names another file (rotated?)"),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Some("the file was moved or deleted")
            }
            // Cannot tell (say, a permission change on the directory): keep the open file.
            Err(_) => None,
        }
    }

    fn write_batch(&mut self, buffer: &[u8], reopen: bool) -> Result<(), String> {
        if reopen || self.file.is_none() {
            let reason = if reopen {
                "reopen requested (SIGHUP)"
            } else {
                "the last reopen failed"
            };
            self.reopen(reason)
                .map_err(|e| format!("cannot reopen {}: {e}", self.path.display()))?;
        } else if self.checked.elapsed() >= IDENTITY_CHECK_EVERY {
            self.checked = Instant::now();
            if let Some(reason) = self.moved_away() {
                self.reopen(reason)
                    .map_err(|e| format!("cannot reopen {}: {e}", self.path.display()))?;
            }
        }
        let Some(file) = self.file.as_mut() else {
            return Err(format!("{} is not open", self.path.display()));
        };
        let before = file
            .metadata()
            .map_err(|e| format!("cannot read the length of the file: {e}"))?
            .len();
        let written = if self.fragment {
            file.write_all(b"\n").and_then(|()| file.write_all(buffer))
        } else {
            file.write_all(buffer)
        };
        match written.and_then(|()| file.flush()) {
            Ok(()) => {
                self.fragment = false;
                Ok(())
            }
            Err(error) => {
                // Nothing of this batch counts as written: cut the file back so that the retry
                // writes whole lines, not lines glued to this attempt's fragment.
                if let Err(cut) = file.set_len(before) {
                    tracing::warn!(
                        path = %self.path.display(),
                        error = %cut,
                        "cannot cut a failed write off the sink file; the next line starts on a \
                         new line"
                    );
                    self.fragment = true;
                }
                Err(format!("write failed: {error}"))
            }
        }
    }
}

/// Opens `path` for appending (creating it and its directory), ending a torn last line.
fn open_for_append(path: &Path) -> std::io::Result<(File, Option<FileIdentity>)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    if ends_with_partial_line(&mut file)? {
        tracing::warn!(
            path = %path.display(),
            "the sink file ends with a partial line (the daemon was killed in the middle of a \
             write?); it is kept, and the next event starts on a new line"
        );
        file.write_all(b"\n")?;
    }
    let identity = FileIdentity::of(&file.metadata()?);
    Ok((file, identity))
}

/// Whether the file is not empty and its last byte is not a newline.
fn ends_with_partial_line(file: &mut File) -> std::io::Result<bool> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    // Reading moves the position; writes in append mode still go to the end.
    file.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

fn write_loop(mut output: Output, mut receiver: mpsc::Receiver<Job>, reopen: &AtomicBool) {
    let mut batch: Vec<(Bytes, Answer)> = Vec::with_capacity(MAX_BATCH);
    let mut buffer: Vec<u8> = Vec::with_capacity(64 * 1024);
    while let Some(first) = receiver.blocking_recv() {
        let mut next = Some(first);
        while let Some(job) = next.take() {
            if let Job::Line(line, done) = job {
                batch.push((line, done));
            }
            if batch.len() < MAX_BATCH {
                next = receiver.try_recv().ok();
            }
        }
        let reopen_requested = reopen.swap(false, Ordering::SeqCst);
        if batch.is_empty() {
            // Woken up only to reopen: do it now, so a rotated file is let go of at once.
            if reopen_requested {
                output.reopen_now();
            }
            continue;
        }
        buffer.clear();
        for (line, _) in &batch {
            buffer.extend_from_slice(line);
            buffer.push(b'\n');
        }
        let result = output.write_batch(&buffer, reopen_requested);
        for (_, done) in batch.drain(..) {
            let _ = done.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    #[tokio::test]
    async fn a_moved_file_is_let_go_of_and_the_path_opened_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let writer = LineWriter::append_to_file(&path).unwrap();
        writer.write_line(line("{\"n\":1}")).await.unwrap();
        std::fs::rename(&path, dir.path().join("events.jsonl.1")).unwrap();
        tokio::time::sleep(IDENTITY_CHECK_EVERY + Duration::from_millis(100)).await;
        writer.write_line(line("{\"n\":2}")).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":2}\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("events.jsonl.1")).unwrap(),
            "{\"n\":1}\n"
        );
    }

    #[tokio::test]
    async fn a_reopen_request_creates_the_file_again_without_waiting_for_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let writer = LineWriter::append_to_file(&path).unwrap();
        std::fs::rename(&path, dir.path().join("events.jsonl.1")).unwrap();
        writer.reopen();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !path.exists() {
            assert!(Instant::now() < deadline, "the path was not opened again");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        writer.write_line(line("{\"n\":1}")).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":1}\n");
    }
}
