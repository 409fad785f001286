//! A small Chrome DevTools Protocol client for the console's browser tests: starts Debian's
//! headless `chromium` (never downloads one), talks CDP over one WebSocket (tungstenite,
//! blocking, loopback only), one isolated browser context per user (own cookies).
//! Shared by `console_browser.rs` and the console bench (`examples/console_bench.rs`
//! includes this file as its `cdp` module).
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest as _;
use tungstenite::{Message, WebSocket};

/// Where Debian installs chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Finds chromium (`XTRAIL_CHROMIUM`, else Debian's path): `None` when it is not there.
pub fn chromium_path() -> Option<PathBuf> {
    let p =
        std::env::var_os("XTRAIL_CHROMIUM").map_or_else(|| PathBuf::from(CHROMIUM), PathBuf::from);
    p.exists().then_some(p)
}

struct Conn {
    ws: WebSocket<TcpStream>,
    next_id: u64,
    /// Events read while waiting for a reply: (session id, method, params).
    events: VecDeque<(String, String, Value)>,
    /// JavaScript dialogs that opened (alert/confirm/prompt): (session, message).
    dialogs: Vec<(String, String)>,
    /// Console errors, uncaught exceptions and CSP reports: (session, text).
    errors: Vec<(String, String)>,
}

impl Conn {
    fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let mut msg = json!({ "id": self.next_id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = s.into();
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .expect("send to chromium");
        self.next_id
    }

    /// Sends a command and waits for its reply.
    fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.send(session, method, params);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if Instant::now() > deadline {
                return Err(format!("{method}: no reply from chromium in 60 s"));
            }
            let Some(msg) = self.read()? else { continue };
            if msg["id"].as_u64() == Some(id) {
                if let Some(e) = msg.get("error") {
                    return Err(format!("{method}: {e}"));
                }
                return Ok(msg["result"].clone());
            }
        }
    }

    /// Reads one message (None on a read timeout), recording events.
    fn read(&mut self) -> Result<Option<Value>, String> {
        let msg = match self.ws.read() {
            Ok(Message::Text(t)) => t.to_string(),
            Ok(_) => return Ok(None),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(format!("chromium connection: {e}")),
        };
        let v: Value = serde_json::from_str(&msg).map_err(|e| format!("CDP message: {e}"))?;
        if let Some(method) = v["method"].as_str() {
            let session = v["sessionId"].as_str().unwrap_or("").to_string();
            let params = v["params"].clone();
            match method {
                "Page.javascriptDialogOpening" => {
                    self.dialogs.push((
                        session.clone(),
                        params["message"].as_str().unwrap_or("").into(),
                    ));
                    // Dismiss it so the page does not hang; the test fails on it anyway.
                    self.send(
                        Some(&session),
                        "Page.handleJavaScriptDialog",
                        json!({ "accept": false }),
                    );
                }
                "Runtime.exceptionThrown" => {
                    let d = &params["exceptionDetails"];
                    let text = d["exception"]["description"]
                        .as_str()
                        .or(d["text"].as_str())
                        .unwrap_or("exception");
                    self.errors.push((session.clone(), text.to_string()));
                }
                "Log.entryAdded" => {
                    let e = &params["entry"];
                    if e["level"] == "error" {
                        let text = format!(
                            "{} {}",
                            e["text"].as_str().unwrap_or(""),
                            e["url"].as_str().unwrap_or("")
                        );
                        self.errors.push((session.clone(), text));
                    }
                }
                _ => {}
            }
            self.events.push_back((session, method.to_string(), params));
            if self.events.len() > 10_000 {
                self.events.pop_front();
            }
        }
        Ok(Some(v))
    }
}

/// A running headless chromium; killed on drop.
pub struct Browser {
    child: Child,
    conn: Rc<RefCell<Conn>>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromium with a fresh profile and connects to its DevTools endpoint.
    pub fn launch(chromium: &Path) -> Browser {
        let profile = tempfile::Builder::new()
            .prefix("xtrail-chromium-")
            .tempdir()
            .expect("profile dir");
        let mut child = Command::new(chromium)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--no-first-run",
                "--no-default-browser-check",
                "--mute-audio",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1440,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let stderr = child.stderr.take().expect("chromium stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(url) = line.strip_prefix("DevTools listening on ") {
                        let _ = tx.send(url.trim().to_string());
                        sent = true;
                    }
                }
                if std::env::var_os("XTRAIL_CHROMIUM_LOG").is_some() {
                    eprintln!("chromium: {line}");
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium did not print its DevTools address in 30 s");
        let req = url.as_str().into_client_request().expect("ws url");
        let host = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .expect("ws host")
            .to_string();
        let stream = TcpStream::connect(&host).expect("connect DevTools");
        let (ws, _) = tungstenite::client(req, stream).expect("DevTools handshake");
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
        Browser {
            child,
            conn: Rc::new(RefCell::new(Conn {
                ws,
                next_id: 0,
                events: VecDeque::new(),
                dialogs: Vec::new(),
                errors: Vec::new(),
            })),
            _profile: profile,
        }
    }

    /// A page in a new isolated context (its own cookie jar: one signed-in user).
    pub fn new_user_page(&self, width: u32, height: u32) -> Page {
        let mut c = self.conn.borrow_mut();
        let ctx = c
            .call(None, "Target.createBrowserContext", json!({}))
            .expect("browser context");
        let ctx = ctx["browserContextId"]
            .as_str()
            .expect("context id")
            .to_string();
        let target = c
            .call(
                None,
                "Target.createTarget",
                json!({ "url": "about:blank", "browserContextId": ctx }),
            )
            .expect("target");
        let target = target["targetId"].as_str().expect("target id").to_string();
        let att = c
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )
            .expect("attach");
        let session = att["sessionId"].as_str().expect("session id").to_string();
        for m in ["Page.enable", "Runtime.enable", "Log.enable"] {
            c.call(Some(&session), m, json!({})).expect(m);
        }
        c.call(
            Some(&session),
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        )
        .expect("viewport");
        drop(c);
        Page {
            conn: Rc::clone(&self.conn),
            session,
            context: ctx,
            expected: RefCell::default(),
        }
    }
}

impl Drop for Browser {
    /// Asks chromium to close (it takes its helper processes along), then kills it if it
    /// is still there after 5 s.
    fn drop(&mut self) {
        if let Ok(mut c) = self.conn.try_borrow_mut() {
            c.next_id += 1;
            let msg = json!({ "id": c.next_id, "method": "Browser.close", "params": {} });
            let _ = c.ws.send(Message::text(msg.to_string()));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One tab, attached with its own CDP session.
pub struct Page {
    conn: Rc<RefCell<Conn>>,
    session: String,
    /// Its browser context (cookie jar, permissions).
    context: String,
    /// Errors the test makes the page log on purpose: each one all of these substrings.
    expected: RefCell<Vec<Vec<String>>>,
}

impl Page {
    fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        self.conn
            .borrow_mut()
            .call(Some(&self.session), method, params)
    }

    /// Grants browser permissions (e.g. `notifications`) to `origin` in this page's context.
    pub fn grant(&self, origin: &str, permissions: &[&str]) {
        self.conn
            .borrow_mut()
            .call(
                None,
                "Browser.grantPermissions",
                json!({ "origin": origin, "permissions": permissions, "browserContextId": self.context }),
            )
            .expect("grant permissions");
    }

    /// Starts loading a URL (does not wait).
    pub fn navigate(&self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }))
            .expect("navigate");
    }

    /// Runs `source` in every new document of this page before its own scripts (outside
    /// the page's CSP): probes such as the console bench's render timer.
    pub fn on_new_document(&self, source: &str) {
        self.call(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": source }),
        )
        .expect("addScriptToEvaluateOnNewDocument");
    }

    /// Loads a URL and waits until the document is complete.
    pub fn goto(&self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }))
            .expect("navigate");
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(30),
        );
    }

    /// Evaluates an expression (promises awaited) and returns its JSON value.
    pub fn eval(&self, expr: &str) -> Result<Value, String> {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
        )?;
        if let Some(ex) = r.get("exceptionDetails") {
            let text = ex["exception"]["description"]
                .as_str()
                .or(ex["text"].as_str())
                .unwrap_or("exception");
            return Err(format!("{expr}: {text}"));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Evaluates, panicking on a script error.
    pub fn js(&self, expr: &str) -> Value {
        self.eval(expr).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Polls `expr` until it is truthy; panics with `what` after `timeout`.
    pub fn wait_for(&self, expr: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            // Errors while a page is loading (no document yet) count as "not yet".
            if let Ok(v) = self.eval(expr) {
                let truthy = !matches!(&v, Value::Null | Value::Bool(false))
                    && v != json!(0)
                    && v != json!("");
                if truthy {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for `{expr}`; page text: {}",
                self.eval("document.body && document.body.innerText.slice(0, 2000)")
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    /// Whether `expr` becomes truthy within `timeout`.
    pub fn becomes(&self, expr: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if matches!(self.eval(expr), Ok(Value::Bool(true))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(150));
        }
        false
    }

    /// Saves a PNG screenshot of the viewport.
    pub fn screenshot(&self, path: &Path) {
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": false }),
            )
            .expect("screenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("png data"))
            .expect("base64 png");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, png).expect("write screenshot");
    }

    /// Dialogs (alert, confirm, prompt) this page opened so far.
    pub fn dialogs(&self) -> Vec<String> {
        self.drain();
        let c = self.conn.borrow();
        c.dialogs
            .iter()
            .filter(|(s, _)| *s == self.session)
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Console errors (failed requests included), uncaught exceptions and CSP violations of
    /// this page so far, but for those declared with [`Page::expect_error`].
    pub fn errors(&self) -> Vec<String> {
        self.drain();
        let c = self.conn.borrow();
        let expected = self.expected.borrow();
        c.errors
            .iter()
            .filter(|(s, m)| {
                *s == self.session
                    && !expected
                        .iter()
                        .any(|parts| parts.iter().all(|p| m.contains(p.as_str())))
            })
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Declares an error the page is expected to log (one with every one of `parts` in its
    /// text, such as the status and path of a request refused on purpose): [`Page::errors`]
    /// leaves such errors out, whether they came before this call or come after it.
    pub fn expect_error(&self, parts: &[&str]) {
        self.expected
            .borrow_mut()
            .push(parts.iter().map(|p| (*p).to_string()).collect());
    }

    /// Reads pending events without waiting.
    fn drain(&self) {
        let mut c = self.conn.borrow_mut();
        while let Ok(Some(_)) = c.read() {}
    }
}
