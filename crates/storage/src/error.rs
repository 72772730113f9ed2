//! The storage layer's errors.
//!
//! openraft's storage traits speak `std::io::Error`, so the log and the state machine report
//! failures as I/O errors that keep their source ([`io_err`] wraps one that is not, keeping it as
//! the source rather than flattening it to text). What else this layer can refuse is typed here;
//! the node maps these to gRPC status in one place (`rskv_server::error`).

/// Wraps a failure from below (RocksDB, a decoder) as the `io::Error` openraft's storage traits
/// require, keeping it as the source so nothing is lost on the way up.
pub(crate) fn io_err<E>(e: E) -> std::io::Error
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    std::io::Error::other(e)
}
