//! Fuzzes the GGUF parser (`engram_ckpt::gguf::parse`, GGUF specification v2/v3) with whole
//! file images. Any input must give either a header whose every promise holds, or an error:
//! never a panic, an overflow or a hang.
#![no_main]

use engram_ckpt::gguf::{decode_blocks, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(h) = parse(data) else {
        return;
    };
    assert!(h.alignment.is_power_of_two());
    assert!(h.data_start.is_multiple_of(h.alignment) || h.data_start == data.len());
    assert!(h.data_start <= data.len());
    let section = &data[h.data_start..];
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for t in &h.tensors {
        // In bounds, aligned, sized as shape x type, whole blocks.
        assert!(t.start <= t.end && t.end <= section.len());
        assert!(t.start.is_multiple_of(h.alignment));
        assert_eq!(Some(t.end - t.start), t.ty.nbytes(t.numel()));
        if t.end > t.start {
            spans.push((t.start, t.end));
        }
        // Decoding the tensor's bytes must work for every type.
        let n = t.numel().min(1 << 16) / t.ty.block_size() * t.ty.block_size();
        let mut out = vec![0f32; n];
        let bytes = &section[t.start..t.start + n / t.ty.block_size() * t.ty.block_bytes()];
        decode_blocks(t.ty, bytes, &mut out);
    }
    // No two tensors overlap.
    spans.sort();
    assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0));
});
