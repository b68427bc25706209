//! Container runtimes. Only Docker (through bollard) for now.

pub mod docker;
