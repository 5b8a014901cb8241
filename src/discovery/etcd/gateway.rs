//! etcd v3's JSON gateway (`/v3/kv/range`, `/v3/watch`) over HTTP/1.1, on pingora's own
//! HTTP client: keys and values are base64, 64-bit numbers are strings, and fields at their
//! zero value are left out of answers.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use pingora_core::connectors::TransportConnector;
use pingora_core::protocols::http::v1::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use serde::Deserialize;
use serde_json::json;

/// Keys asked for per page of a range.
const PAGE: u64 = 1000;

/// One key and its value.
pub(crate) struct Kv {
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
}

/// What a watch reports.
#[derive(Debug)]
pub(crate) enum Watched {
    /// Keys put (`Some` value) and deleted (`None`), as of `revision`.
    Changes {
        revision: u64,
        changes: Vec<(String, Option<Vec<u8>>)>,
    },
    /// Nothing changed up to `revision` (a progress notification, or the watch's creation).
    Progress { revision: u64 },
    /// The watch's start is older than the last compaction: read everything again.
    Compacted { revision: u64 },
}

/// The client of one etcd endpoint.
pub(crate) struct Gateway {
    peer: HttpPeer,
    host: String,
    connector: TransportConnector,
    timeout: Duration,
}

/// A failure talking to etcd.
pub(crate) type Failure = String;

impl Gateway {
    /// The gateway at `host:port`; each call gives up after `timeout` (a watch: after `timeout`
    /// without a word from etcd).
    pub(crate) fn new(host: String, timeout: Duration) -> Self {
        Self {
            peer: HttpPeer::new(host.as_str(), false, String::new()),
            host,
            connector: TransportConnector::new(None),
            timeout,
        }
    }

    async fn post(&self, path: &str, body: &serde_json::Value) -> Result<HttpSession, Failure> {
        let stream = tokio::time::timeout(self.timeout, self.connector.new_stream(&self.peer))
            .await
            .map_err(|_| format!("etcd at {}: connect timed out", self.host))?
            .map_err(|e| format!("etcd at {}: {e}", self.host))?;
        let mut session = HttpSession::new(stream);
        session.read_timeout = Some(self.timeout);
        session.write_timeout = Some(self.timeout);
        let body = body.to_string();
        let mut req =
            RequestHeader::build("POST", path.as_bytes(), None).map_err(|e| e.to_string())?;
        for (name, value) in [
            ("host", self.host.clone()),
            ("content-type", "application/json".to_owned()),
            ("content-length", body.len().to_string()),
        ] {
            req.insert_header(name, value).map_err(|e| e.to_string())?;
        }
        let failed = |e: Box<pingora_error::Error>| format!("etcd at {}: {path}: {e}", self.host);
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(failed)?;
        session.write_body(body.as_bytes()).await.map_err(failed)?;
        session.finish_body().await.map_err(failed)?;
        session.read_response().await.map_err(failed)?;
        let status = session.get_status().map_or(0, |s| s.as_u16());
        if status != 200 {
            let text = read_all(&mut session).await.unwrap_or_default();
            return Err(format!(
                "etcd at {}: {path}: status {status}: {}",
                self.host,
                String::from_utf8_lossy(&text).trim()
            ));
        }
        Ok(session)
    }

    /// Every key under `prefix` with its value, read at one revision, and that revision.
    pub(crate) async fn range(&self, prefix: &str) -> Result<(Vec<Kv>, u64), Failure> {
        let end = prefix_end(prefix.as_bytes());
        let mut kvs = Vec::new();
        let mut from = prefix.as_bytes().to_vec();
        let mut at = 0u64;
        loop {
            let mut ask = json!({
                "key": B64.encode(&from),
                "range_end": B64.encode(&end),
                "limit": PAGE.to_string(),
            });
            if at != 0 {
                ask["revision"] = at.to_string().into();
            }
            let mut session = self.post("/v3/kv/range", &ask).await?;
            let body = read_all(&mut session).await?;
            let page: RangeAnswer = serde_json::from_slice(&body)
                .map_err(|e| format!("etcd at {}: a range answer: {e}", self.host))?;
            if at == 0 {
                at = number(&page.header.revision)?;
            }
            let last = page.kvs.last().map(|kv| kv.key.clone());
            for kv in page.kvs {
                kvs.push(Kv {
                    key: text(&kv.key)?,
                    value: bytes(&kv.value)?,
                });
            }
            match last {
                Some(last) if page.more => {
                    from = B64.decode(last).map_err(|e| e.to_string())?;
                    from.push(0);
                }
                _ => return Ok((kvs, at)),
            }
        }
    }

    /// Watches every key under `prefix` from `revision` on: the stream of what changed, which
    /// breaks after `idle` without a word from etcd.
    pub(crate) async fn watch(
        &self,
        prefix: &str,
        revision: u64,
        idle: Duration,
    ) -> Result<WatchStream, Failure> {
        let ask = json!({"create_request": {
            "key": B64.encode(prefix),
            "range_end": B64.encode(prefix_end(prefix.as_bytes())),
            "start_revision": revision.to_string(),
            "progress_notify": true,
        }});
        let mut session = self.post("/v3/watch", &ask).await?;
        session.read_timeout = Some(idle);
        Ok(WatchStream {
            session,
            buf: Vec::new(),
            host: self.host.clone(),
        })
    }
}

/// The answers of one watch, one JSON object per line.
pub(crate) struct WatchStream {
    session: HttpSession,
    buf: Vec<u8>,
    host: String,
}

impl WatchStream {
    /// What the watch reports next; an error when the stream ends or breaks.
    pub(crate) async fn next(&mut self) -> Result<Watched, Failure> {
        loop {
            if let Some(at) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=at).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return self.parse(&line);
            }
            match self.session.read_body_bytes().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) => return Err(format!("etcd at {}: the watch ended", self.host)),
                Err(e) => return Err(format!("etcd at {}: the watch broke: {e}", self.host)),
            }
        }
    }

    fn parse(&self, line: &[u8]) -> Result<Watched, Failure> {
        let answer: WatchLine = serde_json::from_slice(line)
            .map_err(|e| format!("etcd at {}: a watch answer: {e}", self.host))?;
        let Some(result) = answer.result else {
            let why = answer
                .error
                .map_or_else(|| "no result".into(), |e| e.to_string());
            return Err(format!("etcd at {}: the watch failed: {why}", self.host));
        };
        let revision = number(&result.header.revision)?;
        if result.canceled {
            let compacted = number(&result.compact_revision)?;
            return if compacted != 0 {
                Ok(Watched::Compacted {
                    revision: compacted,
                })
            } else {
                Err(format!(
                    "etcd at {}: the watch was canceled: {}",
                    self.host, result.cancel_reason
                ))
            };
        }
        if result.events.is_empty() {
            return Ok(Watched::Progress { revision });
        }
        let mut changes = Vec::with_capacity(result.events.len());
        for event in result.events {
            let key = text(&event.kv.key)?;
            let value = match event.kind.as_str() {
                "DELETE" => None,
                _ => Some(bytes(&event.kv.value)?),
            };
            changes.push((key, value));
        }
        Ok(Watched::Changes { revision, changes })
    }
}

async fn read_all(session: &mut HttpSession) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    while let Some(chunk) = session.read_body_bytes().await.map_err(|e| e.to_string())? {
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The end of the range of keys that start with `prefix`: its last byte below 0xff, plus one
/// (etcd's `GetPrefixRangeEnd`); `\0` (every key) when there is none.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn number(s: &str) -> Result<u64, Failure> {
    if s.is_empty() {
        return Ok(0);
    }
    s.parse()
        .map_err(|_| format!("etcd sent {s:?} for a number"))
}

fn bytes(b64: &str) -> Result<Vec<u8>, Failure> {
    B64.decode(b64)
        .map_err(|e| format!("etcd sent bad base64: {e}"))
}

fn text(b64: &str) -> Result<String, Failure> {
    String::from_utf8(bytes(b64)?).map_err(|_| "etcd sent a key that is not UTF-8".into())
}

#[derive(Deserialize, Default)]
struct Header {
    #[serde(default)]
    revision: String,
}

#[derive(Deserialize)]
struct RawKv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
struct RangeAnswer {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<RawKv>,
    #[serde(default)]
    more: bool,
}

#[derive(Deserialize)]
struct WatchLine {
    result: Option<WatchResult>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WatchResult {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    canceled: bool,
    #[serde(default)]
    compact_revision: String,
    #[serde(default)]
    cancel_reason: String,
    #[serde(default)]
    events: Vec<RawEvent>,
}

#[derive(Deserialize)]
struct RawEvent {
    /// `DELETE`, or absent for a put.
    #[serde(default, rename = "type")]
    kind: String,
    kv: RawKv,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_past_its_last_key() {
        assert_eq!(prefix_end(b"/peers/"), b"/peers0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
