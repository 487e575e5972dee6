//! IP prefixes (`10.1.0.0/16`, `fd00::/64`) as pod and service CIDRs are written: parsed
//! strictly, compared for containment and overlap. Every component that checks an address
//! against a cluster's CIDRs (the publisher, the remote mirror, `meshctl connect`, the agent)
//! uses this one type.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IPv4 or IPv6 prefix whose host bits are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

/// Text that is not a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a CIDR: {reason}")]
pub struct CidrError {
    /// The text.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Cidr {
    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// Whether `ip` lies in the prefix (never across address families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) == u32::from(i) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) == u128::from(i) & mask
            }
            _ => false,
        }
    }

    /// Whether every address of `other` lies in this prefix.
    pub fn covers(&self, other: &Cidr) -> bool {
        self.bits <= other.bits && self.contains(other.addr)
    }

    /// Whether the two prefixes share an address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.covers(other) || other.covers(self)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let bad = |reason| CidrError {
            text: text.to_owned(),
            reason,
        };
        let (addr, bits) = text
            .split_once('/')
            .ok_or_else(|| bad("expected address/prefix-length"))?;
        let addr: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let canonical = !bits.is_empty()
            && bits.bytes().all(|b| b.is_ascii_digit())
            && (bits == "0" || !bits.starts_with('0'));
        let bits: u8 = bits
            .parse()
            .ok()
            .filter(|b| canonical && *b <= max)
            .ok_or_else(|| bad("the prefix length is not 0..=32 (IPv4) or 0..=128 (IPv6)"))?;
        let cidr = Cidr { addr, bits };
        if !cidr.contains(addr) {
            return Err(bad("host bits are set (write the network address)"));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.bits)
    }
}

/// Every CIDR in `texts` that parses; the others are skipped (records written by this build
/// hold only valid ones; a remote's are validated before they are mirrored).
pub fn parse_all<'a>(texts: impl IntoIterator<Item = &'a String>) -> Vec<Cidr> {
    texts.into_iter().filter_map(|t| t.parse().ok()).collect()
}

/// The special-purpose ranges (RFC 6890 and its IPv6 counterparts) that no node, pod,
/// service or tunnel endpoint of a cluster may claim: traffic to them never leaves a host, or
/// is not unicast.
pub const SPECIAL: [(&str, &str); 8] = [
    ("0.0.0.0/8", "\"this network\" (0.0.0.0/8)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    (
        "240.0.0.0/4",
        "reserved (240.0.0.0/4, with the broadcast address)",
    ),
    ("::/127", "the unspecified or loopback address"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

fn special_ranges() -> impl Iterator<Item = (Cidr, &'static str)> {
    SPECIAL
        .iter()
        .map(|(c, name)| (c.parse().expect("a valid CIDR"), *name))
}

/// The special-purpose range `ip` lies in ([`SPECIAL`]), if any.
pub fn special(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    special_ranges()
        .find(|(c, _)| c.contains(ip))
        .map(|(_, name)| name)
}

/// The special-purpose range `cidr` shares addresses with ([`SPECIAL`]), if any.
pub fn special_overlap(cidr: &Cidr) -> Option<&'static str> {
    special_ranges()
        .find(|(c, _)| c.overlaps(cidr))
        .map(|(_, name)| name)
}

/// Whether `ip` lies in any of `cidrs`.
pub fn any_contains(cidrs: &[Cidr], ip: IpAddr) -> bool {
    cidrs.iter().any(|c| c.contains(ip))
}

#[cfg(test)]
mod tests;
