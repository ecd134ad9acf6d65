//! A small HTTP/1.1 client over `std::net::TcpStream`: one connection per
//! request (`Connection: close`), so a test controls every byte it sends
//! (content types, malformed bodies, oversized bodies) and reads the status,
//! headers and body exactly as the server wrote them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// Longest wait for a response.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bodies larger than this are written from a second thread, so a server
/// that answers before reading the whole body (413) cannot block the
/// client while it is still writing.
const WRITER_THREAD_THRESHOLD: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics (showing the body) if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("status {} body is not JSON ({e}): {}", self.status, self.text()))
    }

    /// The JSON body, after checking the status.
    #[track_caller]
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.text());
        self.json()
    }
}

/// One request, as raw as a test needs it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Request {
        Request { method: method.to_string(), path: path.to_string(), headers: Vec::new(), body: None }
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// A JSON body with `Content-Type: application/json`.
    pub fn json(self, body: &Value) -> Request {
        self.header("Content-Type", "application/json").body(body.to_string().into_bytes())
    }

    /// A raw body; set the content type yourself.
    pub fn body(mut self, body: Vec<u8>) -> Request {
        self.body = Some(body);
        self
    }

    /// Sends the request and checks the answer against the server's OpenAPI
    /// document ([`crate::schema::check`]).
    pub fn send(&self, addr: SocketAddr) -> Response {
        let response = self.send_unchecked(addr);
        crate::schema::check(addr, &self.method, &self.path, &response);
        response
    }

    /// Sends the request; the answer is not checked against the document.
    pub fn send_unchecked(&self, addr: SocketAddr) -> Response {
        let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_read_timeout(Some(RESPONSE_TIMEOUT)).expect("set_read_timeout");
        let body = self.body.as_deref().unwrap_or_default();
        let mut head = format!("{} {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n", self.method, self.path);
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if self.body.is_some() || self.method != "GET" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        // A write error is not a failure by itself: the server may answer
        // (413) and close before reading everything. The response decides.
        let writer = if request.len() > WRITER_THREAD_THRESHOLD {
            let mut write_half = stream.try_clone().expect("clone stream");
            Some(std::thread::spawn(move || {
                let _ = write_half.write_all(&request);
            }))
        } else {
            let _ = stream.write_all(&request);
            None
        };
        let mut raw = Vec::new();
        let read = stream.read_to_end(&mut raw);
        if raw.is_empty() {
            panic!("{} {}: no response ({read:?})", self.method, self.path);
        }
        if let Some(writer) = writer {
            // Unblock the writer if the server stopped reading.
            let _ = stream.shutdown(std::net::Shutdown::Both);
            let _ = writer.join();
        }
        parse_response(&raw).unwrap_or_else(|| panic!("malformed response: {}", String::from_utf8_lossy(&raw)))
    }
}

fn parse_response(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        decode_chunked(rest)?
    } else {
        match headers.iter().find(|(n, _)| n == "content-length") {
            Some((_, length)) => rest.get(..length.parse::<usize>().ok()?)?.to_vec(),
            None => rest.to_vec(),
        }
    };
    Some(Response { status, headers, body })
}

fn decode_chunked(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// A client bound to one server and (optionally) one API key.
#[derive(Debug, Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub key: Option<String>,
}

impl Client {
    pub fn new(addr: SocketAddr, key: Option<&str>) -> Client {
        Client { addr, key: key.map(str::to_string) }
    }

    /// A request with this client's `Authorization` header.
    pub fn request(&self, method: &str, path: &str) -> Request {
        let request = Request::new(method, path);
        match &self.key {
            Some(key) => request.header("Authorization", &format!("Bearer {key}")),
            None => request,
        }
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path).send(self.addr)
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.request("POST", path).json(body).send(self.addr)
    }

    /// A POST with an `Idempotency-Key`.
    pub fn post_idempotent(&self, path: &str, body: &Value, idempotency_key: &str) -> Response {
        self.request("POST", path).header("Idempotency-Key", idempotency_key).json(body).send(self.addr)
    }

    pub fn delete(&self, path: &str) -> Response {
        self.request("DELETE", path).send(self.addr)
    }

    /// Any method, with an optional JSON body.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Response {
        let request = self.request(method, path);
        match body {
            Some(body) => request.json(body),
            None => request,
        }
        .send(self.addr)
    }

    /// The log's head position, from `/healthz`.
    pub fn head_position(&self) -> u64 {
        let health = Request::new("GET", "/healthz").send(self.addr).expect(200);
        health["head_position"].as_u64().expect("head_position")
    }
}
