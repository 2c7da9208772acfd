//! The wire contract of shipgate: every request and response body of the HTTP API, as types
//! with Serialize, Deserialize and an OpenAPI schema. The server answers with them, the CLI
//! reads answers through them, and the OpenAPI document is derived from them. This crate holds
//! data and its shape only: no rule, no I/O.
#![forbid(unsafe_code)]

pub mod answers;
pub mod constraints;
pub mod data;
pub mod parity;
pub mod records;
pub mod requests;
pub mod status;
