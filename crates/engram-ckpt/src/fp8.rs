//! The two FP8 formats of safetensors (OCP "FP8 Formats for Deep Learning"):
//! E4M3 in its "fn" variant (bias 7, no infinities, 0x7F/0xFF are NaN, max 448) and
//! E5M2 (bias 15, IEEE-style infinities and NaNs, max 57344).
//! Decoding uses a 256-entry table; encoding rounds to nearest even and saturates.

use std::sync::OnceLock;

fn decode(byte: u8, exp_bits: u32, man_bits: u32, bias: i32, ieee_special: bool) -> f32 {
    let sign = if byte & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let exp = ((byte as u32) >> man_bits) & ((1 << exp_bits) - 1);
    let man = (byte as u32) & ((1 << man_bits) - 1);
    let exp_max = (1 << exp_bits) - 1;
    if ieee_special && exp == exp_max {
        return if man == 0 {
            sign * f32::INFINITY
        } else {
            f32::NAN
        };
    }
    if !ieee_special && exp == exp_max && man == (1 << man_bits) - 1 {
        return f32::NAN;
    }
    let frac = man as f32 / (1 << man_bits) as f32;
    if exp == 0 {
        sign * frac * 2f32.powi(1 - bias)
    } else {
        sign * (1.0 + frac) * 2f32.powi(exp as i32 - bias)
    }
}

pub fn e4m3_table() -> &'static [f32; 256] {
    static T: OnceLock<[f32; 256]> = OnceLock::new();
    T.get_or_init(|| std::array::from_fn(|b| decode(b as u8, 4, 3, 7, false)))
}

pub fn e5m2_table() -> &'static [f32; 256] {
    static T: OnceLock<[f32; 256]> = OnceLock::new();
    T.get_or_init(|| std::array::from_fn(|b| decode(b as u8, 5, 2, 15, true)))
}

/// Nearest code among the non-negative finite codes `0..=max_code` (whose values increase
/// with the code), ties to the even code.
fn encode(v: f32, table: &[f32; 256], max_code: u8, nan_code: u8) -> u8 {
    if v.is_nan() {
        return nan_code;
    }
    let sign = if v.is_sign_negative() { 0x80 } else { 0 };
    let a = v.abs();
    if a >= table[max_code as usize] {
        return sign | max_code;
    }
    // Binary search for the first code whose value is >= a.
    let (mut lo, mut hi) = (0u8, max_code);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if table[mid as usize] < a {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let code = if lo == 0 {
        0
    } else {
        let (below, above) = (table[(lo - 1) as usize], table[lo as usize]);
        let (d_below, d_above) = (a - below, above - a);
        if d_below < d_above || (d_below == d_above && (lo - 1) % 2 == 0) {
            lo - 1
        } else {
            lo
        }
    };
    sign | code
}

pub fn encode_e4m3(v: f32) -> u8 {
    encode(v, e4m3_table(), 0x7E, 0x7F)
}

pub fn encode_e5m2(v: f32) -> u8 {
    // 0x7B is the largest finite code (57344); 0x7E a quiet NaN.
    encode(v, e5m2_table(), 0x7B, 0x7E)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let t = e4m3_table();
        assert_eq!(t[0x7E], 448.0);
        assert!(t[0x7F].is_nan());
        assert_eq!(t[0x01], 2f32.powi(-9)); // smallest subnormal
        assert_eq!(t[0x38], 1.0);
        let t = e5m2_table();
        assert_eq!(t[0x7B], 57344.0);
        assert_eq!(t[0x7C], f32::INFINITY);
        assert_eq!(t[0x3C], 1.0);
    }

    #[test]
    fn every_code_round_trips() {
        for b in 0..=255u8 {
            let v = e4m3_table()[b as usize];
            if !v.is_nan() {
                assert_eq!(e4m3_table()[encode_e4m3(v) as usize], v, "e4m3 {b:#x}");
            }
            let v = e5m2_table()[b as usize];
            if v.is_finite() {
                assert_eq!(e5m2_table()[encode_e5m2(v) as usize], v, "e5m2 {b:#x}");
            }
        }
    }

    #[test]
    fn rounds_and_saturates() {
        // Between 1.0 (0x38) and 1.125 (0x39): 1.0625 is a tie, goes to the even code 0x38.
        assert_eq!(encode_e4m3(1.0625), 0x38);
        assert_eq!(encode_e4m3(1.07), 0x39);
        assert_eq!(encode_e4m3(1e6), 0x7E);
        assert_eq!(encode_e4m3(-1e6), 0xFE);
        assert!(e4m3_table()[encode_e4m3(f32::NAN) as usize].is_nan());
    }
}
