//! engram-ckpt: checkpoint files for engram.
//!
//! Reads safetensors files zero-copy (memory-mapped), single or sharded Hugging Face folders,
//! validates every header, offset and index entry, decodes any float dtype to f32 on the fly,
//! and writes models tensor by tensor into temporary files renamed into place when complete
//! (output folders are built beside their destination and switched in by one rename), with a
//! checksum per tensor that readers verify.

pub mod checksum;
pub mod chunk;
pub mod commit;
pub mod dtype;
pub mod error;
pub mod file;
pub mod fp8;
pub mod gguf;
pub mod header;
pub mod model;
pub mod names;
pub mod peft;
mod simd;
pub mod stats;
pub mod writer;

pub use chunk::CHUNK;
pub use commit::Staged;
pub use dtype::DType;
pub use error::{Error, Result};
pub use file::{SafetensorsFile, TensorView};
pub use header::TensorInfo;
pub use model::{Model, ParsedIndex, parse_index};
pub use stats::{DiffStats, Stats};
pub use writer::{ModelWriter, TensorSpec, WriteOptions, write_atomic};

/// Provenance metadata for an output file: engram's version, the command and its parameters.
pub fn provenance(
    command: &str,
    params: &serde_json::Value,
) -> std::collections::BTreeMap<String, String> {
    let mut m = std::collections::BTreeMap::new();
    m.insert("format".into(), "pt".into());
    m.insert("engram.version".into(), env!("CARGO_PKG_VERSION").into());
    m.insert("engram.command".into(), command.into());
    m.insert("engram.params".into(), params.to_string());
    m
}
