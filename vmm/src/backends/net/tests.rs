//! Unit tests of netback.
