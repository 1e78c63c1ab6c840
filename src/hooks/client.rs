//! The hooks' outbound HTTP: one signed `POST` per call over plain HTTP/1.1, with hyper's
//! client connection (the hyper the HTTP listener already uses). One TCP connection per call,
//! driven in the caller's own future (no task of its own), so a call's timeout ends everything
//! it opened.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header;
use ring::hmac;

use super::HookError;

/// Largest answer read from the backend.
const MAX_ANSWER_BYTES: usize = 1 << 20;
/// The signature header: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub const SIGNATURE_HEADER: &str = "x-edgerelay-signature";

/// Where a hook's calls go: a parsed `http://host[:port]/path`.
#[derive(Debug, Clone)]
pub struct Target {
    host: String,
    port: u16,
    /// `host[:port]` for the `Host` header.
    authority: String,
    /// Path and query.
    path: String,
}

impl Target {
    /// The error is the message for the config key.
    pub fn parse(url: &str) -> Result<Target, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if parsed.scheme() != "http" {
            return Err(format!("{url:?}: only http:// is supported (use a local TLS proxy for https)"));
        }
        let host = parsed.host_str().ok_or_else(|| format!("{url:?} has no host"))?;
        let port = parsed.port_or_known_default().unwrap_or(80);
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let authority = match parsed.port() {
            Some(port) => format!("{}:{port}", parsed.host_str().unwrap_or_default()),
            None => parsed.host_str().unwrap_or_default().to_owned(),
        };
        let mut path = parsed.path().to_owned();
        if let Some(query) = parsed.query() {
            path.push('?');
            path.push_str(query);
        }
        Ok(Target { host, port, authority, path })
    }
}

/// The signature header's value for `body` sent at `now_s`.
pub fn sign(key: &hmac::Key, now_s: u64, body: &[u8]) -> String {
    let mut context = hmac::Context::with_key(key);
    context.update(format!("{now_s}.").as_bytes());
    context.update(body);
    let tag = context.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={now_s},v1={hex}")
}

/// Posts `body` (JSON) to `target` with its signature; the answer's status and body.
pub async fn post(target: &Target, signature: String, body: Bytes) -> Result<(u16, Bytes), HookError> {
    let io_error = |e: std::io::Error| HookError::Connect(e.to_string());
    let stream = tokio::net::TcpStream::connect((target.host.as_str(), target.port)).await.map_err(io_error)?;
    let _ = stream.set_nodelay(true);
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| HookError::Connect(e.to_string()))?;
    let request = hyper::Request::post(&target.path)
        .header(header::HOST, &target.authority)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONNECTION, "close")
        .header(SIGNATURE_HEADER, signature)
        .body(Full::new(body))
        .map_err(|e| HookError::Connect(e.to_string()))?;
    let exchange = async move {
        let response = sender.send_request(request).await.map_err(|e| HookError::Connect(e.to_string()))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| HookError::BadAnswer(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok((status, body))
    };
    // The connection ends once the exchange is over (its sender dropped, `Connection: close`).
    let (result, _) = tokio::join!(exchange, connection);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t = Target::parse("http://127.0.0.1:9000/hooks?x=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.authority.as_str(), t.path.as_str()),
            ("127.0.0.1", 9000, "127.0.0.1:9000", "/hooks?x=1")
        );
        let t = Target::parse("http://backend/").unwrap();
        assert_eq!((t.port, t.authority.as_str()), (80, "backend"));
        let t = Target::parse("http://[::1]:81/h").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 81));
        assert!(Target::parse("https://backend/").unwrap_err().contains("only http://"));
        assert!(Target::parse("backend:80").is_err());
    }

    #[test]
    fn signatures_are_hmac_sha256_of_time_and_body() {
        // Python: hmac.new(b"Jefe", b"12.{}", hashlib.sha256).hexdigest()
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        assert_eq!(sign(&key, 12, b"{}"), "t=12,v1=920d401f4879de198b71e775f802db6e3364de1e84bd18ca56903b6593a32642");
    }
}
