//! Tests of the xl.cfg reader.
