//! The access-log pipe of `--proxy envoy`: MeshAccessLog's `tcp` backends.
//!
//! Envoy cannot send log lines to a TCP address itself. For a `tcp` backend
//! the zone configures Envoy's file logger to write JSON records
//! `{"address": "host:port", "message": …}` to the dataplane's named pipe
//! ([`meridian_xds::generate::observability::access_log_pipe`]). This agent
//! creates that pipe (owner-only) before Envoy starts, reads it record by
//! record and sends each message to its address: a string as it is (Envoy
//! formatted the line, newline included), an object as one line of JSON.
//!
//! One connection per address is kept and reused. A record whose collector
//! cannot be reached is dropped (logging must never hold Envoy up: a full
//! pipe would block its log flushes); failures are logged at most once per
//! address per [`WARN_EVERY`]. A record that is not such JSON is dropped
//! with a warning, the same way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A record longer than this is dropped (Envoy's lines are far shorter).
pub const MAX_RECORD: usize = 1 << 20;
/// How long connecting to a collector may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Failures towards one address are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Makes the named pipe at `path` (owner read and write only), replacing a
/// pipe left by an earlier run; refuses to replace anything else.
pub fn make_pipe(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_fifo() => {
            std::fs::remove_file(path).with_context(|| format!("removing the old pipe {}", path.display()))?
        }
        Ok(_) => bail!("{} exists and is not a named pipe: not replacing it", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
    }
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .with_context(|| format!("creating the access-log pipe {}", path.display()))?;
    Ok(())
}

/// One record of the pipe, parsed: the collector and the bytes to send it.
pub fn parse_record(line: &[u8]) -> Result<(String, Vec<u8>), String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    let address = v
        .get("address")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
        .ok_or("no \"address\"")?;
    let mut bytes = match v.get("message") {
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(m @ Value::Object(_)) => serde_json::to_vec(m).map_err(|e| e.to_string())?,
        _ => return Err("no \"message\" (a string or an object)".into()),
    };
    if bytes.last() != Some(&b'\n') {
        bytes.push(b'\n');
    }
    Ok((address.to_string(), bytes))
}

/// Sends records to their collectors over kept connections.
#[derive(Default)]
struct Sender {
    connections: HashMap<String, TcpStream>,
    warned: HashMap<String, Instant>,
}

impl Sender {
    async fn send(&mut self, address: &str, bytes: &[u8]) {
        // A kept connection may have been closed by the collector: one
        // retry on a fresh one.
        for _ in 0..2 {
            let stream = match self.connections.get_mut(address) {
                Some(s) => s,
                None => match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
                    Ok(Ok(s)) => self.connections.entry(address.to_string()).or_insert(s),
                    Ok(Err(e)) => return self.warn(address, &format!("cannot connect: {e}")),
                    Err(_) => return self.warn(address, "cannot connect: timed out"),
                },
            };
            match stream.write_all(bytes).await {
                Ok(()) => return,
                Err(e) => {
                    self.connections.remove(address);
                    self.warn(address, &format!("write failed: {e}"));
                }
            }
        }
    }

    fn warn(&mut self, address: &str, why: &str) {
        let now = Instant::now();
        let due = self
            .warned
            .get(address)
            .is_none_or(|at| now.duration_since(*at) >= WARN_EVERY);
        if due {
            self.warned.insert(address.to_string(), now);
            tracing::warn!(collector = address, reason = why, "access-log record dropped");
        }
    }
}

/// Reads the pipe at `path` (made with [`make_pipe`]) until the task is
/// dropped, sending every record on.
pub async fn forward(path: PathBuf) -> anyhow::Result<()> {
    // Opened for reading and writing, the pipe never reaches end of file
    // when Envoy closes or reopens it.
    let pipe = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
        .with_context(|| format!("opening the access-log pipe {}", path.display()))?;
    let mut reader = BufReader::new(pipe);
    let mut sender = Sender::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_RECORD as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            continue;
        }
        if line.len() > MAX_RECORD {
            tracing::warn!(limit = MAX_RECORD, "access-log record over the limit dropped");
            // Skip the rest of the oversized record.
            let mut rest = Vec::new();
            while !line.ends_with(b"\n") {
                rest.clear();
                if (&mut reader)
                    .take(MAX_RECORD as u64)
                    .read_until(b'\n', &mut rest)
                    .await?
                    == 0
                {
                    break;
                }
                line.clear();
                line.extend_from_slice(&rest);
            }
            continue;
        }
        let record = line.strip_suffix(b"\n").unwrap_or(&line);
        if record.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_record(record) {
            Ok((address, bytes)) => sender.send(&address, &bytes).await,
            Err(why) => tracing::warn!(reason = why, "access-log record that is not a collector record dropped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn records_carry_their_address_and_one_line() {
        let (a, b) = parse_record(br#"{"address":"logs:5000","message":"GET / 200\n"}"#).unwrap();
        assert_eq!((a.as_str(), b.as_slice()), ("logs:5000", &b"GET / 200\n"[..]));
        let (_, b) = parse_record(br#"{"address":"logs:5000","message":{"b":"2","a":"1"}}"#).unwrap();
        assert_eq!(b, b"{\"b\":\"2\",\"a\":\"1\"}\n", "as Envoy wrote it");
        let (_, b) = parse_record(br#"{"address":"logs:5000","message":"no newline"}"#).unwrap();
        assert_eq!(b, b"no newline\n");
        for bad in [
            &b"garbage"[..],
            br#"{"message":"x"}"#,
            br#"{"address":"a:1","message":3}"#,
            br#"{"address":"","message":"x"}"#,
        ] {
            assert!(parse_record(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn only_a_pipe_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("regular");
        std::fs::write(&file, "keep").unwrap();
        assert!(make_pipe(&file).is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
        let pipe = dir.path().join("al.pipe");
        make_pipe(&pipe).unwrap();
        make_pipe(&pipe).unwrap();
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let m = std::fs::metadata(&pipe).unwrap();
        assert!(m.file_type().is_fifo());
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
    }

    #[tokio::test]
    async fn records_written_as_envoy_does_reach_their_collector() {
        let dir = tempfile::tempdir().unwrap();
        let pipe = dir.path().join("al.pipe");
        make_pipe(&pipe).unwrap();
        let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = collector.local_addr().unwrap().to_string();
        let task = tokio::spawn(forward(pipe.clone()));
        // Envoy opens the file for appending and writes whole records; it
        // may close and reopen it (log rotation) between them.
        let records = [
            format!("{{\"address\":\"{address}\",\"message\":\"first line\\n\"}}\n"),
            "not a record\n".to_string(),
            format!("{{\"address\":\"{address}\",\"message\":{{\"status\":\"200\"}}}}\n"),
        ];
        let writer_pipe = pipe.clone();
        let writer = std::thread::spawn(move || {
            for r in records {
                let mut f = std::fs::OpenOptions::new().append(true).open(&writer_pipe).unwrap();
                f.write_all(r.as_bytes()).unwrap();
            }
        });
        let (mut conn, _) = tokio::time::timeout(Duration::from_secs(10), collector.accept())
            .await
            .unwrap()
            .unwrap();
        let want = b"first line\n{\"status\":\"200\"}\n";
        let mut got = vec![0u8; want.len()];
        tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
        writer.join().unwrap();
        assert!(!task.is_finished(), "the forwarder keeps reading");
        task.abort();
    }
}
