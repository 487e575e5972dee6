//! The mesh's data model: which keys exist, what their values are, and how values are
//! encoded. Every crate that reads or writes the store (the API server's controllers, node
//! agents, remote mirrors, meshctl) goes through this crate, so the layout lives in one place.
//! See ARCHITECTURE.md, "Key layout and records".
//!
//! # Layout
//! - [`keys`]: [`Key`], every key of the layout, built and parsed; prefixes.
//! - [`records`]: the value types, one per kind of key, each with a schema version.
//! - [`identity`]: security identities (cluster id and number) and the reserved ones, whose
//!   labels every reader defines itself.
//! - [`cidr`]: IP prefixes (pod and service CIDRs): parsing, containment, overlap.
//! - [`clusterset`]: the Multi-Cluster Services API's derived state: a `ServiceImport` merged
//!   from every cluster's export, and ClusterSetIPs the same in every cluster.
//! - [`remote`]: the records of remote-cluster connections (`mesh/config/remotes/`,
//!   `mesh/status/remotes/`).
//! - [`reach`]: what each node's agent finds unreachable (`mesh/status/reach/`).
//! - [`endpoint`]: API server endpoints (`https://host:port`).
//! - [`bootstrap`]: the agent bootstrap exchange (token and signing request for a certificate).
//! - [`duration`]: durations as text (`500ms`, `10s`, `2m`): the one parser and printer of
//!   every flag and spec.
//! - [`codec`]: encoding (protobuf) and decoding checked against the key's kind, and the
//!   human-readable form meshctl prints.
//!
//! # Encoding
//! Values are protobuf messages (prost). Every record's field 1 is its schema version
//! ([`SCHEMA`]); a reader refuses a record of a newer schema instead of misreading it, and
//! protobuf's unknown-field rules let a newer reader take an older record. Endpoint slices
//! keep node and zone names in per-slice tables and addresses as raw bytes: a slice of 100
//! ready IPv4 endpoints spread over 10 nodes in 3 zones, one port, encodes to 1,925 bytes
//! (1.9 KiB, [`codec::SLICE_100_BYTES`], measured by a test that fails if it changes), about 19
//! bytes an endpoint. For comparison, Cilium's JSON service record is about 10.6 KiB for 100
//! endpoints, and protobuf with zstd about 0.3 KiB; compression is left for when slices are
//! shown to dominate the store.

pub mod bootstrap;
pub mod cidr;
pub mod clusterset;
pub mod codec;
pub mod duration;
pub mod endpoint;
pub mod identity;
pub mod keys;
pub mod reach;
pub mod records;
pub mod remote;

pub use codec::{DecodeError, Record};
pub use keys::{Key, KeyError, Kind};

/// The schema version this build writes and the newest it reads.
pub const SCHEMA: u32 = 1;
