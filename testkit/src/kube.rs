//! A fake Kubernetes API ([`FakeApi`]): plain HTTP on a loopback port, enough of the API for
//! what meshctl and mesh-apiserver ask of one — GETs from a table of paths, lists made of the
//! stored objects of a collection, creates, replaces (also of the `status` subresource) with
//! resource versions, deletes, and handlers for create-only resources (a TokenReview).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

/// What a handler answers a create with: the object it returns (with 201 Created).
type Handler = Arc<dyn Fn(Value) -> Value + Send + Sync>;

/// A Kubernetes API that answers GETs from a table of paths, creates (POST to a collection)
/// and replaces (PUT, with the resourceVersion read) objects, and records the requests. A
/// POST to a path given a handler ([`FakeApi::on_create`]) is answered by the handler instead.
#[derive(Clone, Default)]
pub struct FakeApi {
    objects: Arc<Mutex<BTreeMap<String, Value>>>,
    requests: Arc<Mutex<Vec<String>>>,
    writes: Arc<Mutex<Vec<String>>>,
    handlers: Arc<Mutex<BTreeMap<String, Handler>>>,
}

impl std::fmt::Debug for FakeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApi")
            .field("objects", &self.objects)
            .field("requests", &self.requests)
            .field("writes", &self.writes)
            .finish_non_exhaustive()
    }
}

impl FakeApi {
    /// Serves on a loopback port until the process ends; returns its URL.
    pub fn serve(&self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let api = self.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let api = api.clone();
                std::thread::spawn(move || api.answer(stream));
            }
        });
        url
    }

    /// Sets the object (or list) a GET of `path` returns.
    pub fn put(&self, path: &str, v: Value) {
        self.objects.lock().unwrap().insert(path.to_owned(), v);
    }

    /// Removes `path`: a GET of it is then 404.
    pub fn remove(&self, path: &str) {
        self.objects.lock().unwrap().remove(path);
    }

    /// What a GET of `path` returns now (also an object created or replaced by a client).
    ///
    /// # Panics
    /// If there is nothing at `path`.
    pub fn get(&self, path: &str) -> Value {
        self.objects.lock().unwrap()[path].clone()
    }

    /// The request targets (path and query) so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// The writes since the last call, as `POST <path>`, `PUT <path>` or `DELETE <path>`.
    pub fn take_writes(&self) -> Vec<String> {
        std::mem::take(&mut *self.writes.lock().unwrap())
    }

    /// Answers a POST to `path` (a create-only resource, like a TokenReview) with
    /// `handler(body)` and 201 Created; nothing is stored.
    pub fn on_create(&self, path: &str, handler: impl Fn(Value) -> Value + Send + Sync + 'static) {
        self.handlers
            .lock()
            .unwrap()
            .insert(path.to_owned(), Arc::new(handler));
    }

    fn answer(&self, stream: TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            return;
        }
        let mut length = 0;
        let mut header = String::new();
        while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
            if let Some((k, v)) = header.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap();
            }
            header.clear();
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let method = line.split_whitespace().next().unwrap_or("").to_owned();
        let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        self.requests.lock().unwrap().push(target.clone());
        let path = target.split('?').next().unwrap_or("").to_owned();
        let handler = self.handlers.lock().unwrap().get(&path).cloned();
        let (status, body) = match handler {
            Some(handler) if method == "POST" => (
                "201 Created",
                handler(serde_json::from_slice(&body).unwrap()),
            ),
            _ => self.table(&method, &path, &body),
        };
        let body = body.to_string();
        let mut stream = stream;
        let _ = write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }

    /// A GET of a collection with stored objects: those objects, as a list —
    /// `…/namespaces/<ns>/<resource>` lists that namespace's, `…/<resource>` every namespace's
    /// (label selectors are not applied). `None` when no stored object is of the collection.
    fn list(objects: &BTreeMap<String, Value>, path: &str) -> Option<Value> {
        let (prefix, resource) = path.rsplit_once('/')?;
        let items: Vec<Value> = objects
            .iter()
            .filter(|(p, _)| {
                let Some((collection, _name)) = p.rsplit_once('/') else {
                    return false;
                };
                collection == path
                    || collection.rsplit_once('/').is_some_and(|(ns_path, r)| {
                        r == resource
                            && ns_path
                                .rsplit_once('/')
                                .and_then(|(p, _)| p.strip_suffix("/namespaces"))
                                == Some(prefix)
                    })
            })
            .map(|(_, v)| v.clone())
            .collect();
        (!items.is_empty()).then(|| json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}))
    }

    /// A request answered from the table of objects.
    fn table(&self, method: &str, path: &str, body: &[u8]) -> (&'static str, Value) {
        let status = |code: u16, reason: &str, message: String| {
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": message, "reason": reason, "code": code})
        };
        let mut objects = self.objects.lock().unwrap();
        match method {
            // A collection with stored objects lists them; otherwise the table answers (an
            // empty collection is a table entry the test puts).
            "GET" => match Self::list(&objects, path).or_else(|| objects.get(path).cloned()) {
                Some(v) => ("200 OK", v),
                None => (
                    "404 Not Found",
                    status(404, "NotFound", format!("{path} not found")),
                ),
            },
            "DELETE" => {
                self.writes.lock().unwrap().push(format!("DELETE {path}"));
                match objects.remove(path) {
                    Some(_) => (
                        "200 OK",
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                    ),
                    None => ("404 Not Found", status(404, "NotFound", path.to_owned())),
                }
            }
            "PUT" if path.ends_with("/status") => {
                self.writes.lock().unwrap().push(format!("PUT {path}"));
                let parent = path.trim_end_matches("/status");
                let sent: Value = serde_json::from_slice(body).unwrap();
                match objects.get_mut(parent) {
                    None => ("404 Not Found", status(404, "NotFound", parent.to_owned())),
                    Some(o)
                        if o["metadata"]["resourceVersion"]
                            != sent["metadata"]["resourceVersion"] =>
                    {
                        (
                            "409 Conflict",
                            status(409, "Conflict", format!("{parent} was modified")),
                        )
                    }
                    Some(o) => {
                        // Only the status changes through the subresource.
                        o["status"] = sent["status"].clone();
                        let next = o["metadata"]["resourceVersion"]
                            .as_str()
                            .and_then(|v| v.parse::<u64>().ok())
                            .unwrap_or(0)
                            + 1;
                        o["metadata"]["resourceVersion"] = next.to_string().into();
                        ("200 OK", o.clone())
                    }
                }
            }
            "POST" | "PUT" => {
                self.writes.lock().unwrap().push(format!("{method} {path}"));
                let mut object: Value = serde_json::from_slice(body).unwrap();
                let at = if method == "POST" {
                    format!("{path}/{}", object["metadata"]["name"].as_str().unwrap())
                } else {
                    path.to_owned()
                };
                let stored = objects
                    .get(&at)
                    .map(|o| o["metadata"]["resourceVersion"].clone());
                match (method, stored) {
                    ("POST", Some(_)) => (
                        "409 Conflict",
                        status(409, "AlreadyExists", format!("{at} already exists")),
                    ),
                    ("PUT", None) => ("404 Not Found", status(404, "NotFound", at)),
                    ("PUT", Some(v)) if v != object["metadata"]["resourceVersion"] => (
                        "409 Conflict",
                        status(409, "Conflict", format!("{at} was modified")),
                    ),
                    (_, v) => {
                        let next = v
                            .and_then(|v| v.as_str().and_then(|v| v.parse::<u64>().ok()))
                            .unwrap_or(0)
                            + 1;
                        object["metadata"]["resourceVersion"] = next.to_string().into();
                        objects.insert(at, object.clone());
                        (
                            if method == "POST" {
                                "201 Created"
                            } else {
                                "200 OK"
                            },
                            object,
                        )
                    }
                }
            }
            _ => (
                "405 Method Not Allowed",
                status(405, "MethodNotAllowed", method.to_owned()),
            ),
        }
    }
}

#[cfg(test)]
mod tests;
