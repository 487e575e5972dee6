//! API server endpoints as the cluster record and connection records hold them:
//! `https://host:port`, where host is a DNS name or an IP address (IPv6 in brackets).

/// An endpoint that is not `https://host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("endpoint {endpoint:?}: expected https://host:port")]
pub struct EndpointError {
    /// The endpoint.
    pub endpoint: String,
}

/// `(host, port)` of `https://host:port[/]` (brackets removed from an IPv6 host).
pub fn host_port(endpoint: &str) -> Result<(String, u16), EndpointError> {
    let bad = || EndpointError {
        endpoint: endpoint.to_owned(),
    };
    let rest = endpoint.strip_prefix("https://").ok_or_else(bad)?;
    let (host, port) = rest
        .trim_end_matches('/')
        .rsplit_once(':')
        .ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.contains('/') {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_https_host_port() {
        assert_eq!(
            host_port("https://lb.example.com:2379").unwrap(),
            ("lb.example.com".to_owned(), 2379)
        );
        assert_eq!(
            host_port("https://[fd00::1]:2379/").unwrap(),
            ("fd00::1".to_owned(), 2379)
        );
        for bad in [
            "http://10.0.0.1:2379",
            "https://10.0.0.1",
            "https://:2379",
            "https://10.0.0.1:0",
            "https://a/b:2379",
            "10.0.0.1:2379",
        ] {
            assert!(host_port(bad).is_err(), "{bad}");
        }
    }
}
