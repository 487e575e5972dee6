//! Reading a whole prefix of a remote, in pages at one revision.

use super::*;

/// Why [`read_all`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A request failed.
    #[error("{0}")]
    Request(String),
    /// More than the budget: reading stopped there.
    #[error("over budget after {keys} keys and {bytes} bytes")]
    OverBudget {
        /// Keys read.
        keys: u64,
        /// Bytes read.
        bytes: u64,
    },
    /// The server returned keys out of order (a broken or hostile server).
    #[error("the server returned keys out of order")]
    OutOfOrder,
}

/// Every key and value under `prefix` at one revision (the first page's, unless given),
/// read in pages, stopping once more than `budget` (keys, bytes) were read; returns the
/// revision and the store's etcd cluster id too.
pub async fn read_all(
    client: &mut Client,
    prefix: &str,
    revision: Option<i64>,
    budget: Option<(u64, u64)>,
) -> Result<(i64, u64, Vec<(Vec<u8>, Vec<u8>)>), ReadError> {
    let end = prefix_end(prefix);
    let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
    let mut from = prefix.as_bytes().to_vec();
    let mut at = revision.unwrap_or(0);
    let mut cluster_id = 0;
    let mut out = Vec::new();
    let mut bytes = 0u64;
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if at > 0 {
            options = options.with_revision(at);
        }
        let resp = bounded(kv.get(from.clone(), Some(options)))
            .await
            .map_err(ReadError::Request)?;
        if let Some(h) = resp.header() {
            if at == 0 {
                at = h.revision();
            }
            cluster_id = h.cluster_id();
        }
        let kvs = resp.kvs();
        for kv in kvs {
            // Strictly increasing and inside the range, or a server could keep us reading.
            if kv.key() < from.as_slice() || kv.key() >= end.as_slice() {
                return Err(ReadError::OutOfOrder);
            }
            bytes += (kv.key().len() + kv.value().len()) as u64;
            out.push((kv.key().to_vec(), kv.value().to_vec()));
        }
        if let Some((max_keys, max_bytes)) = budget
            && (out.len() as u64 > max_keys || bytes > max_bytes)
        {
            return Err(ReadError::OverBudget {
                keys: out.len() as u64,
                bytes,
            });
        }
        match kvs.last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok((at, cluster_id, out)),
        }
    }
}
