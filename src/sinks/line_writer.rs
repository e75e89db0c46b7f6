//! The `jsonl` and `stdout` sinks: one JSON object per line, written by a dedicated thread.
//!
//! Callers queue lines; the thread writes everything queued, flushes once, then answers each
//! caller. A line is acknowledged only after it reached the operating system (a process crash
//! cannot lose it). A process killed in the middle of a write can leave a torn last line in a
//! file; on open such a file gets its missing newline, so the fragment stays a line of its own
//! (that readers can detect and skip) instead of being glued to the next event.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::SinkError;

const QUEUE_DEPTH: usize = 8192;
const MAX_BATCH: usize = 4096;

type Job = (Arc<[u8]>, oneshot::Sender<Result<(), String>>);

#[derive(Clone)]
pub struct LineWriter {
    jobs: mpsc::Sender<Job>,
}

impl LineWriter {
    pub fn append_to_file(path: &Path) -> std::io::Result<LineWriter> {
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
        Self::spawn(Box::new(file), "sink-jsonl")
    }

    pub fn stdout() -> LineWriter {
        // Spawning a thread only fails when the process is out of resources; the stdout sink
        // then degrades to reporting errors for every line.
        Self::spawn(Box::new(std::io::stdout()), "sink-stdout").unwrap_or_else(|_| {
            let (jobs, _) = mpsc::channel(1);
            LineWriter { jobs }
        })
    }

    fn spawn(output: Box<dyn Write + Send>, name: &str) -> std::io::Result<LineWriter> {
        let (jobs, receiver) = mpsc::channel(QUEUE_DEPTH);
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || write_loop(output, receiver))?;
        Ok(LineWriter { jobs })
    }

    pub async fn write_line(&self, line: Arc<[u8]>) -> Result<(), SinkError> {
        let (done, wait) = oneshot::channel();
        self.jobs
            .send((line, done))
            .await
            .map_err(|_| SinkError::transient("sink writer stopped"))?;
        wait.await
            .map_err(|_| SinkError::transient("sink writer stopped"))?
            .map_err(SinkError::transient)
    }
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

fn write_loop(mut output: Box<dyn Write + Send>, mut receiver: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut buffer: Vec<u8> = Vec::with_capacity(64 * 1024);
    while let Some(first) = receiver.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        buffer.clear();
        for (line, _) in &batch {
            buffer.extend_from_slice(line);
            buffer.push(b'\n');
        }
        let result = output
            .write_all(&buffer)
            .and_then(|()| output.flush())
            .map_err(|e| format!("write failed: {e}"));
        for (_, done) in batch.drain(..) {
            let _ = done.send(result.clone());
        }
    }
}
