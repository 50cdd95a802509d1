//! Fuzzes the `model.safetensors.index.json` parser: an error or a weight map whose names are
//! unique and whose shard paths stay inside the model folder; never a panic.
#![no_main]

use engram_ckpt::parse_index;
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::path::{Component, Path};

fuzz_target!(|data: &[u8]| {
    let Ok(idx) = parse_index(data) else {
        return;
    };
    assert!(!idx.weight_map.is_empty());
    let mut seen = HashSet::new();
    for (tensor, shard) in &idx.weight_map {
        assert!(seen.insert(tensor.as_str()), "duplicate {tensor}");
        let p = Path::new(shard);
        assert!(!p.is_absolute());
        assert!(
            p.components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        );
    }
});
