//! A real browser for the tests: headless Chromium driven over its DevTools protocol (CDP),
//! through a minimal WebSocket client (text frames only: all CDP sends), and a PNG reader to
//! tell a drawn screenshot from a blank one. Chromium is a hard requirement: a missing one
//! fails the test with the command that installs it, it is never skipped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::ChildGuard;

/// The Chromium binary, or a failure naming how to install it.
pub fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::var("PATH").unwrap_or_default().split(':') {
            let path = Path::new(dir).join(name);
            if path.is_file() {
                return path;
            }
        }
    }
    panic!(
        "headless Chromium is required to test report.html, but no `chromium` is on PATH: \
         install it with `apt-get install -y chromium` (.ci/run does)"
    );
}

/// A headless Chromium (killed on drop, its profile in a fresh directory) and one CDP session
/// with its page.
pub struct Browser {
    _child: ChildGuard,
    _profile: tempfile::TempDir,
    page: WebSocket,
    next_id: u64,
    /// Every event received so far (console messages, exceptions, log entries, dialogs).
    pub events: Vec<Value>,
}

impl Browser {
    /// Starts Chromium on `about:blank` with a `width`×`height` window and attaches to its page.
    pub fn start(width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting chromium");
        // Chromium says where its DevTools listen on stderr: "DevTools listening on ws://...".
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let child = ChildGuard(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        let port: u16 = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!("chromium printed no DevTools address:\n{}", seen.join("\n"))
            });
            if let Some(url) = line.split("DevTools listening on ").nth(1) {
                let host = url.trim_start_matches("ws://").split('/').next().unwrap();
                break host.rsplit(':').next().unwrap().parse().unwrap();
            }
            seen.push(line);
        };
        // The page target may take a moment to be listed.
        let mut list = Value::Null;
        for _ in 0..50 {
            list = serde_json::from_str(&http_get(port, "/json/list")).unwrap_or(Value::Null);
            if list
                .as_array()
                .is_some_and(|l| l.iter().any(|t| t["type"] == "page"))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let ws = list
            .as_array()
            .and_then(|l| l.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .unwrap_or_else(|| {
                panic!(
                    "no page target in {list:?} ({:?})",
                    http_get(port, "/json/list")
                )
            })
            .to_string();
        let path = format!(
            "/{}",
            ws.trim_start_matches("ws://").split_once('/').unwrap().1
        );
        let mut browser = Browser {
            _child: child,
            _profile: profile,
            page: WebSocket::connect(port, &path),
            next_id: 0,
            events: Vec::new(),
        };
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            browser.call(domain, json!({}));
        }
        browser
    }

    /// Calls `method` and returns its result (panics on a CDP error).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.page
            .send(&json!({ "id": id, "method": method, "params": params }).to_string());
        loop {
            let message: Value = serde_json::from_str(&self.page.receive()).unwrap();
            if message["id"] == id {
                if !message["error"].is_null() {
                    panic!("{method}: {}", message["error"]);
                }
                return message["result"].clone();
            }
            if message["method"] == "Page.javascriptDialogOpening" {
                // An injected `alert()` would otherwise hang the page.
                self.events.push(message.clone());
                self.call("Page.handleJavaScriptDialog", json!({ "accept": true }));
                continue;
            }
            self.events.push(message);
        }
    }

    /// Opens `url` and waits until `ready` (a JS expression) is true.
    pub fn open(&mut self, url: &str, ready: &str) {
        self.call("Page.navigate", json!({ "url": url }));
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.eval(ready) != json!(true) {
            assert!(Instant::now() < deadline, "{url}: never ready ({ready})");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Evaluates `expression` in the page; its value (promises awaited). A script error fails.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// A mouse event of `kind` (`mouseMoved`, `mousePressed`, `mouseReleased`) at (x, y).
    pub fn mouse(&mut self, kind: &str, x: f64, y: f64) {
        let mut params = json!({ "type": kind, "x": x, "y": y });
        if kind != "mouseMoved" {
            params["button"] = json!("left");
            params["clickCount"] = json!(1);
        }
        self.call("Input.dispatchMouseEvent", params);
    }

    /// What the page said went wrong: console errors, uncaught exceptions, log errors (a
    /// blocked or failed load shows there).
    pub fn errors(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e["method"].as_str()? {
                "Runtime.exceptionThrown" => Some(e["params"]["exceptionDetails"].to_string()),
                "Runtime.consoleAPICalled"
                    if matches!(e["params"]["type"].as_str(), Some("error" | "assert")) =>
                {
                    Some(e["params"]["args"].to_string())
                }
                "Log.entryAdded" if e["params"]["entry"]["level"] == "error" => {
                    Some(e["params"]["entry"].to_string())
                }
                _ => None,
            })
            .collect()
    }

    /// A PNG of the whole page, `width` wide.
    pub fn screenshot(&mut self, width: u32) -> Vec<u8> {
        let height = self
            .eval("Math.ceil(document.documentElement.scrollHeight)")
            .as_u64()
            .unwrap_or(1000)
            .clamp(200, 8000);
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        );
        // Let the page lay out at its new size (the timeline redraws on resize).
        std::thread::sleep(Duration::from_millis(300));
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot is base64")
    }
}

/// The body of an HTTP GET on localhost. HTTP/1.1 (Chromium's DevTools server answers an
/// HTTP/1.0 request with nothing), read by its Content-Length (it keeps the connection open).
fn http_get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return String::new();
        }
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; length];
    let _ = reader.read_exact(&mut body);
    String::from_utf8_lossy(&body).into_owned()
}

/// The client side of a WebSocket (RFC 6455), enough for CDP: text messages out (masked, as a
/// client must), text messages in (fragments joined), pings answered.
struct WebSocket {
    stream: TcpStream,
}

impl WebSocket {
    fn connect(port: u16, path: &str) -> WebSocket {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: bG9vcHNweS10ZXN0cw==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).expect("websocket handshake");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "websocket refused: {head}"
        );
        WebSocket { stream }
    }

    fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        let mut frame = vec![0x80 | opcode];
        let len = payload.len();
        if len < 126 {
            frame.push(0x80 | len as u8);
        } else if len < 1 << 16 {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = [0x6c, 0x6f, 0x6f, 0x70];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).unwrap();
    }

    fn send(&mut self, text: &str) {
        self.send_frame(0x1, text.as_bytes());
    }

    fn receive(&mut self) -> String {
        let mut message = Vec::new();
        loop {
            let mut head = [0u8; 2];
            self.stream
                .read_exact(&mut head)
                .expect("reading from chromium");
            let (fin, opcode) = (head[0] & 0x80 != 0, head[0] & 0x0f);
            let mut len = u64::from(head[1] & 0x7f);
            if len == 126 {
                let mut b = [0u8; 2];
                self.stream.read_exact(&mut b).unwrap();
                len = u64::from(u16::from_be_bytes(b));
            } else if len == 127 {
                let mut b = [0u8; 8];
                self.stream.read_exact(&mut b).unwrap();
                len = u64::from_be_bytes(b);
            }
            let mut payload = vec![0u8; len as usize];
            self.stream.read_exact(&mut payload).unwrap();
            match opcode {
                0x9 => self.send_frame(0xA, &payload),
                0x8 => panic!("chromium closed the DevTools connection"),
                0x0..=0x2 => {
                    message.extend_from_slice(&payload);
                    if fin {
                        return String::from_utf8(message).expect("CDP sends UTF-8");
                    }
                }
                _ => {}
            }
        }
    }
}

/// A decoded 8-bit RGB(A) PNG: width, height and RGB pixels.
pub struct Image {
    /// Pixels across.
    pub width: usize,
    /// Pixels down.
    pub height: usize,
    /// RGB, row by row.
    pub rgb: Vec<[u8; 3]>,
}

/// Decodes the PNGs Chromium writes (8-bit RGB or RGBA, not interlaced).
pub fn decode_png(png: &[u8]) -> Image {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let (mut at, mut idat) = (8, Vec::new());
    let (mut width, mut height, mut channels) = (0, 0, 0);
    while at + 8 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        let kind = &png[at + 4..at + 8];
        let data = &png[at + 8..at + 8 + len];
        match kind {
            b"IHDR" => {
                width = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
                height = u32::from_be_bytes(data[4..8].try_into().unwrap()) as usize;
                assert_eq!(data[8], 8, "bit depth");
                assert_eq!(data[12], 0, "interlaced");
                channels = match data[9] {
                    2 => 3,
                    6 => 4,
                    other => panic!("PNG colour type {other}"),
                };
            }
            b"IDAT" => idat.extend_from_slice(data),
            _ => {}
        }
        at += 12 + len;
    }
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..])
        .read_to_end(&mut raw)
        .expect("PNG data inflates");
    let stride = width * channels;
    assert_eq!(raw.len(), height * (stride + 1), "PNG data size");
    let mut previous = vec![0u8; stride];
    let mut rgb = Vec::with_capacity(width * height);
    for row in raw.chunks(stride + 1) {
        let (filter, line) = (row[0], &row[1..]);
        let mut out = vec![0u8; stride];
        for i in 0..stride {
            let a = if i >= channels { out[i - channels] } else { 0 };
            let b = previous[i];
            let c = if i >= channels {
                previous[i - channels]
            } else {
                0
            };
            let predicted = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => ((u16::from(a) + u16::from(b)) / 2) as u8,
                4 => {
                    let p = i16::from(a) + i16::from(b) - i16::from(c);
                    let (pa, pb, pc) = (
                        (p - i16::from(a)).abs(),
                        (p - i16::from(b)).abs(),
                        (p - i16::from(c)).abs(),
                    );
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
                other => panic!("PNG filter {other}"),
            };
            out[i] = line[i].wrapping_add(predicted);
        }
        rgb.extend(out.chunks(channels).map(|p| [p[0], p[1], p[2]]));
        previous = out;
    }
    Image { width, height, rgb }
}
