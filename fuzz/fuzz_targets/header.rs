//! Fuzzes the safetensors header parser with whole file images. Any input must give either a
//! header whose every promise holds, or an error: never a panic, an overflow or a hang.
#![no_main]

use engram_ckpt::dtype::decode_f32;
use engram_ckpt::header::parse_file_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(h) = parse_file_bytes(data) else {
        return;
    };
    assert!(h.data_start >= 8 && h.data_start <= data.len());
    let section = &data[h.data_start..];
    let mut prev_end = 0;
    for t in &h.tensors {
        // In bounds, sized as shape x dtype, sorted and not overlapping.
        assert!(t.start <= t.end && t.end <= section.len());
        assert_eq!(t.end - t.start, t.numel() * t.dtype.size());
        assert!(t.start >= prev_end || t.start == t.end);
        if t.end > t.start {
            prev_end = t.end;
        }
        // Decoding the tensor's bytes must work for every dtype.
        let bytes = &section[t.start..t.end];
        let mut out = vec![0f32; t.numel().min(1 << 16)];
        let n = out.len();
        decode_f32(t.dtype, &bytes[..n * t.dtype.size()], &mut out);
    }
});
