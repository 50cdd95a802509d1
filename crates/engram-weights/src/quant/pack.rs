//! Bit packing of quantization codes, row by row: code i of a row occupies bits
//! [i·b, (i+1)·b) of the row's little-endian bit stream (bit k is bit k mod 8 of byte k/8),
//! and every row starts on a byte boundary, so rows can be written and read independently.
//! At 4 bits, entry 2j is the low nibble of byte j; at 8 bits the codes are the bytes.

/// Bytes of one packed row of `cols` codes of `bits` bits.
pub fn row_bytes(cols: usize, bits: u32) -> usize {
    (cols * bits as usize).div_ceil(8)
}

/// Packs one row of codes (each below 2^bits) into `out` (`row_bytes` long).
pub fn pack_row(codes: &[u8], bits: u32, out: &mut [u8]) {
    match bits {
        8 => out.copy_from_slice(codes),
        4 => {
            for (o, c) in out.iter_mut().zip(codes.chunks(2)) {
                *o = c[0] | c.get(1).map_or(0, |h| h << 4);
            }
        }
        2 => {
            for (o, c) in out.iter_mut().zip(codes.chunks(4)) {
                *o = c
                    .iter()
                    .enumerate()
                    .fold(0, |a, (i, &v)| a | (v << (2 * i)));
            }
        }
        _ => {
            out.fill(0);
            let mut acc = 0u64;
            let mut nbits = 0u32;
            let mut j = 0;
            for &c in codes {
                acc |= (c as u64) << nbits;
                nbits += bits;
                while nbits >= 8 {
                    out[j] = acc as u8;
                    j += 1;
                    acc >>= 8;
                    nbits -= 8;
                }
            }
            if nbits > 0 {
                out[j] = acc as u8;
            }
        }
    }
}

/// Unpacks one row of `codes.len()` codes from `packed`.
pub fn unpack_row(packed: &[u8], bits: u32, codes: &mut [u8]) {
    match bits {
        8 => codes.copy_from_slice(&packed[..codes.len()]),
        4 => {
            for (i, c) in codes.iter_mut().enumerate() {
                *c = (packed[i / 2] >> (4 * (i % 2))) & 0xF;
            }
        }
        _ => {
            let mask = (1u64 << bits) - 1;
            let mut acc = 0u64;
            let mut nbits = 0u32;
            let mut j = 0;
            for c in codes.iter_mut() {
                while nbits < bits {
                    acc |= (packed[j] as u64) << nbits;
                    j += 1;
                    nbits += 8;
                }
                *c = (acc & mask) as u8;
                acc >>= bits;
                nbits -= bits;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_width_and_length() {
        let mut r = crate::rng::Rng::new(4);
        for bits in 2..=8u32 {
            for cols in [1usize, 2, 3, 7, 8, 9, 31, 64, 100] {
                let codes: Vec<u8> = (0..cols).map(|_| r.below(1 << bits) as u8).collect();
                let mut p = vec![0u8; row_bytes(cols, bits)];
                pack_row(&codes, bits, &mut p);
                let mut back = vec![0u8; cols];
                unpack_row(&p, bits, &mut back);
                assert_eq!(back, codes, "{bits} bits, {cols} cols");
                // The generic path agrees with the fast ones.
                let mut g = vec![0u8; p.len()];
                let mut acc: Vec<bool> = Vec::new();
                for &c in &codes {
                    acc.extend((0..bits).map(|k| c >> k & 1 == 1));
                }
                for (k, b) in acc.iter().enumerate() {
                    g[k / 8] |= (*b as u8) << (k % 8);
                }
                assert_eq!(p, g, "{bits} bits, {cols} cols: layout");
            }
        }
    }

    #[test]
    fn four_bit_layout_is_low_nibble_first() {
        let mut p = [0u8; 2];
        pack_row(&[1, 2, 3], 4, &mut p);
        assert_eq!(p, [0x21, 0x03]);
    }
}
