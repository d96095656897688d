//! In-memory store for tests and `--store memory`.
