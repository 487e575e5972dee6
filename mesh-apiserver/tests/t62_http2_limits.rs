//! Issue 11, defect 2: the ports advertise an HTTP/2 stream limit and drop connections whose
//! client stopped answering: a raw HTTP/2 client that says hello and then goes silent sees
//! the server's limit in its SETTINGS, its pings, and then the connection closed.
//!
//! raftmesh only (the flags are etcd's, but etcd's defaults differ: no stream limit, pings
//! after 2 h).

#[path = "support/util.rs"]
mod util;

use std::time::Duration;

use testkit::localcluster::{Cluster, Spec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use util::{flavor, raftmesh_only};

/// An HTTP/2 frame header: payload length, type, flags, stream id.
async fn frame(tcp: &mut TcpStream) -> Option<(u8, u8, Vec<u8>)> {
    let mut head = [0u8; 9];
    tcp.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], payload))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_sees_the_stream_limit_then_pings_then_the_door() {
    raftmesh_only("raftmesh's limits; etcd's defaults differ");
    let mut spec = Spec::with_members(1);
    spec.extra_args = [
        "--max-concurrent-streams",
        "7",
        "--grpc-keepalive-interval",
        "1s",
        "--grpc-keepalive-timeout",
        "1s",
    ]
    .map(String::from)
    .to_vec();
    let cluster = Cluster::start(flavor(), spec).await.unwrap();
    let addr = cluster
        .client_url(0)
        .trim_start_matches("http://")
        .to_owned();
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    // The client preface and an empty SETTINGS frame; then silence (no SETTINGS ack, no PING
    // answers).
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();

    let (mut limit, mut pinged) = (None, false);
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some((kind, flags, payload)) = frame(&mut tcp).await {
            match kind {
                // SETTINGS (not an ack): 6-byte parameters.
                4 if flags & 1 == 0 => {
                    for p in payload.chunks_exact(6) {
                        if u16::from_be_bytes([p[0], p[1]]) == 3 {
                            limit = Some(u32::from_be_bytes([p[2], p[3], p[4], p[5]]));
                        }
                    }
                }
                // PING, not an ack.
                6 if flags & 1 == 0 => pinged = true,
                // GOAWAY: the server is closing.
                7 => {}
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(limit, Some(7), "SETTINGS_MAX_CONCURRENT_STREAMS");
    assert!(pinged, "the server never pinged the idle connection");
    assert!(
        closed.is_ok(),
        "a client that answers no ping is still connected after 20 s"
    );
}
