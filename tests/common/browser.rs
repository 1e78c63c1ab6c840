//! Headless Chromium driven over the DevTools protocol (CDP) with the WebSocket client the crate
//! already has, so browser tests need nothing but a `chromium` binary (`scripts/test` installs
//! Debian's; `EDGERELAY_CHROMIUM` names another one). Included by those tests with
//! `#[path = "common/browser.rs"] mod browser;` beside `mod common;`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::common::within;

pub fn chromium_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("EDGERELAY_CHROMIUM") {
        return path.into();
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!("no Chromium found: install Debian's `chromium` (scripts/test does) or set EDGERELAY_CHROMIUM");
}

/// A headless Chromium and a CDP connection to it. The process is killed when dropped.
pub struct Browser {
    _process: tokio::process::Child,
    _profile: tempfile::TempDir,
    cdp: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Browser {
    pub async fn launch() -> Browser {
        Browser::launch_with(&[]).await
    }

    /// A browser with more command-line switches (fake media devices, autoplay...).
    pub async fn launch_with(extra: &[&str]) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut process = tokio::process::Command::new(chromium_binary())
            .args([
                "--headless=new",
                // Root in containers and CI has no user namespaces for the sandbox.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--window-size=900,820",
                "--remote-debugging-port=0",
                // A name for loopback that is not `localhost`: a page there is no secure context.
                "--host-resolver-rules=MAP relay.test 127.0.0.1",
            ])
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        let mut lines = BufReader::new(process.stderr.take().unwrap()).lines();
        let url = within("DevTools URL from chromium", async {
            loop {
                let line = lines.next_line().await.unwrap().expect("chromium exited before DevTools was up");
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return url.trim().to_owned();
                }
            }
        })
        .await;
        // Keep draining stderr so Chromium never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (cdp, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
        Browser { _process: process, _profile: profile, cdp, next_id: 1 }
    }

    /// Sends a CDP command (to a page when `session` is given) and returns its result.
    pub async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        match self.try_call(session, method, &params).await {
            Ok(result) => result,
            Err(error) => panic!("{method} failed: {error}"),
        }
    }

    pub async fn try_call(&mut self, session: Option<&str>, method: &str, params: &Value) -> Result<Value, Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        self.cdp.send(Message::text(command.to_string())).await.unwrap();
        loop {
            let message = within(method, self.cdp.next()).await.expect("CDP connection open").unwrap();
            let Message::Text(text) = message else { continue };
            let reply: Value = serde_json::from_str(&text).unwrap();
            if reply["id"] == json!(id) {
                return match reply.get("error") {
                    Some(error) => Err(error.clone()),
                    None => Ok(reply["result"].clone()),
                };
            }
        }
    }

    /// Opens a page and returns its CDP session id.
    pub async fn open(&mut self, url: &str) -> String {
        let target = self.call(None, "Target.createTarget", json!({"url": url})).await;
        let attached =
            self.call(None, "Target.attachToTarget", json!({"targetId": target["targetId"], "flatten": true})).await;
        attached["sessionId"].as_str().unwrap().to_owned()
    }

    /// Evaluates a JavaScript expression in a page, awaiting a promise, and returns its value.
    /// While the page is still navigating (its context replaced) the evaluation is retried.
    pub async fn eval(&mut self, page: &str, expression: &str) -> Value {
        let params = json!({"expression": expression, "awaitPromise": true, "returnByValue": true});
        let mut tries = 0;
        let result = loop {
            match self.try_call(Some(page), "Runtime.evaluate", &params).await {
                Ok(result) => break result,
                Err(error) if tries < 100 && error.to_string().contains("context") => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("evaluating `{expression}` failed: {error}"),
            }
        };
        assert!(result.get("exceptionDetails").is_none(), "`{expression}` threw: {result}");
        result["result"]["value"].clone()
    }

    /// Waits (bounded) until the page's JavaScript expression is truthy, then returns its value.
    pub async fn wait_for(&mut self, page: &str, expression: &str) -> Value {
        let poll = format!(
            "new Promise((resolve, reject) => {{ const until = Date.now() + 15000; const check = () => {{ \
             let v; try {{ v = ({expression}); }} catch (e) {{ v = undefined; }} \
             if (v) resolve(v); else if (Date.now() > until) reject(new Error('timed out: {what}; page: ' + document.body.innerText)); \
             else setTimeout(check, 20); }}; check(); }})",
            what = expression.replace('\'', "")
        );
        self.eval(page, &poll).await
    }
}

impl Browser {
    /// A PNG screenshot of a page.
    pub async fn screenshot(&mut self, page: &str) -> Vec<u8> {
        let shot = self.call(Some(page), "Page.captureScreenshot", json!({"format": "png"})).await;
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        png
    }

    /// Saves a screenshot of a page as `target/tmp/<name>`, and as `docs/<docs_name>` when
    /// `EDGERELAY_UPDATE_SCREENSHOTS` is set; prints where.
    pub async fn save_screenshot(&mut self, page: &str, name: &str, docs_name: &str) {
        let png = self.screenshot(page).await;
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, &png).unwrap();
        println!("screenshot: {}", path.display());
        if std::env::var_os("EDGERELAY_UPDATE_SCREENSHOTS").is_some() {
            let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs").join(docs_name);
            std::fs::write(&docs, &png).unwrap();
            println!("and {}", docs.display());
        }
    }

    /// Closes a page (its connections end with it).
    pub async fn close_page(&mut self, page: &str) {
        self.call(Some(page), "Page.close", json!({})).await;
    }

    /// Closes the browser (bounded: a hung one is killed on drop anyway).
    pub async fn close(mut self) {
        tokio::time::timeout(Duration::from_secs(5), self.call(None, "Browser.close", json!({}))).await.ok();
    }
}

/// The call page (`/call/`) for `user` in `room`, with a token allowing any `call:*` room.
pub fn call_url(relay: &crate::common::TestRelay, user: &str, room: &str) -> String {
    let token = relay.token(user, "acme", &["call:*"]);
    format!("http://127.0.0.1:{}/call/#token={token}&room={room}", relay.relay.tcp_addr().port())
}

/// Waits until the call page `page` decoded at least `video` video and `audio` audio frames
/// from each of `others`; returns its `callStats()`.
pub async fn decoded(browser: &mut Browser, page: &str, others: &[&str], video: u64, audio: u64) -> Value {
    let checks: Vec<String> = others
        .iter()
        .map(|o| {
            format!("(s.tiles[{o:?}]?.videoFrames ?? 0) >= {video} && (s.tiles[{o:?}]?.audioFrames ?? 0) >= {audio}")
        })
        .collect();
    let expression = format!("(s => ({}) && s)(callStats())", checks.join(" && "));
    browser.wait_for(page, &expression).await
}

/// Chromium flags for call pages: fake camera and microphone, audio without a click, and every
/// page (a background tab of one browser) kept running at full speed.
pub const CALL_FLAGS: [&str; 6] = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
];
