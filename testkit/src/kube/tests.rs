use std::io::{Read, Write};
use std::net::TcpStream;

use serde_json::{Value, json};

use super::FakeApi;

/// One request to `url`: the status line's code and the body.
fn request(url: &str, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let mut stream = TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    let body = body.to_string();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let code = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    (code, serde_json::from_str(body).unwrap())
}

#[test]
fn gets_creates_and_replaces_at_the_version_read() {
    let api = FakeApi::default();
    let url = api.serve();
    api.put("/api/v1/nodes", json!({"kind": "NodeList", "items": []}));
    assert_eq!(
        request(&url, "GET", "/api/v1/nodes?limit=5", &json!(null)).0,
        200
    );
    assert_eq!(request(&url, "GET", "/api/v1/pods", &json!(null)).0, 404);

    let secrets = "/api/v1/namespaces/m/secrets";
    let secret = json!({"metadata": {"name": "s"}, "data": {}});
    let (code, created) = request(&url, "POST", secrets, &secret);
    assert_eq!(
        (code, &created["metadata"]["resourceVersion"]),
        (201, &json!("1"))
    );
    assert_eq!(request(&url, "POST", secrets, &secret).0, 409);
    let stale = json!({"metadata": {"name": "s", "resourceVersion": "0"}});
    assert_eq!(request(&url, "PUT", &format!("{secrets}/s"), &stale).0, 409);
    assert_eq!(
        request(&url, "PUT", &format!("{secrets}/s"), &created).0,
        200
    );
    assert_eq!(
        api.get(&format!("{secrets}/s"))["metadata"]["resourceVersion"],
        "2"
    );
    assert_eq!(
        api.take_writes(),
        [
            format!("POST {secrets}"),
            format!("POST {secrets}"),
            format!("PUT {secrets}/s"),
            format!("PUT {secrets}/s")
        ]
    );
    assert!(api.take_writes().is_empty());
    assert_eq!(api.requests()[0], "/api/v1/nodes?limit=5");
}

#[test]
fn a_handler_answers_creates_of_its_path() {
    let api = FakeApi::default();
    let url = api.serve();
    let reviews = "/apis/authentication.k8s.io/v1/tokenreviews";
    api.on_create(reviews, |mut review| {
        review["status"] = json!({"authenticated": true});
        review
    });
    let (code, answer) = request(&url, "POST", reviews, &json!({"spec": {"token": "t"}}));
    assert_eq!(code, 201);
    assert_eq!(
        answer,
        json!({"spec": {"token": "t"}, "status": {"authenticated": true}})
    );
    assert!(api.take_writes().is_empty(), "nothing stored");
}
