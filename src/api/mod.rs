//! The nydusd-compatible HTTP API on a unix socket.
