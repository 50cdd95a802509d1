//! Counts and sizes as people write and read them: `250M` parameters, `500MB` shards, `2.47 GB`.
//! The command line's value parsers and the benchmarks' tables use these.

use anyhow::{Context, Result, bail};

/// Parses counts like `1000`, `250M`, `1.5B`, `7b`.
pub fn parse_count(s: &str) -> Result<u64> {
    parse_scaled(s, &[("k", 1e3), ("m", 1e6), ("b", 1e9), ("g", 1e9)])
        .with_context(|| format!("cannot read '{s}' as a count (e.g. 250M, 1.5B)"))
}

/// Parses sizes like `500MB`, `2GB`, `4GiB`, `1000000`.
pub fn parse_bytes(s: &str) -> Result<u64> {
    parse_scaled(
        s,
        &[
            ("kib", 1024.0),
            ("mib", 1048576.0),
            ("gib", 1073741824.0),
            ("kb", 1e3),
            ("mb", 1e6),
            ("gb", 1e9),
            ("k", 1e3),
            ("m", 1e6),
            ("g", 1e9),
            ("b", 1.0),
        ],
    )
    .with_context(|| format!("cannot read '{s}' as a size in bytes (e.g. 500MB, 2GB)"))
}

fn parse_scaled(s: &str, units: &[(&str, f64)]) -> Result<u64> {
    let low = s.trim().to_ascii_lowercase();
    let (num, mult) = units
        .iter()
        .find_map(|(u, m)| low.strip_suffix(u).map(|n| (n.trim().to_string(), *m)))
        .unwrap_or((low.clone(), 1.0));
    // Whole numbers exactly (u64::MAX is not an f64), others through f64; a fraction of a
    // unit (`0.5`, `0.1B`) is an error, not rounded (decimal noise of `1.1GB` is not one).
    let n = match num.parse::<u64>() {
        Ok(i) if mult.fract() == 0.0 => i.checked_mul(mult as u64),
        _ => {
            let x = num.parse::<f64>()? * mult;
            let n = x.round();
            if (x - n).abs() > 4.0 * f64::EPSILON * n.abs().max(1.0) {
                bail!("{x} is not a whole number");
            }
            // 2^64 as f64; every f64 below it converts exactly.
            (0.0..18_446_744_073_709_551_616.0)
                .contains(&n)
                .then_some(n as u64)
        }
    };
    match n {
        Some(n) if n >= 1 => Ok(n),
        _ => bail!("must be a whole number from 1 to {}", u64::MAX),
    }
}

/// `1234567` -> `1.2M`; exact below ten thousand.
pub fn count(n: u64) -> String {
    let f = n as f64;
    match n {
        0..10_000 => n.to_string(),
        10_000..1_000_000 => format!("{:.1}K", f / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", f / 1e6),
        _ => format!("{:.2}B", f / 1e9),
    }
}

/// Bytes in decimal units: `2.47 GB`.
pub fn bytes(n: u64) -> String {
    let f = n as f64;
    match n {
        0..1000 => format!("{n} B"),
        1000..1_000_000 => format!("{:.1} KB", f / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", f / 1e6),
        _ => format!("{:.2} GB", f / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counts_and_sizes() {
        assert_eq!(parse_count("250M").unwrap(), 250_000_000);
        assert_eq!(parse_count("1.5B").unwrap(), 1_500_000_000);
        assert_eq!(parse_count("7b").unwrap(), 7_000_000_000);
        assert_eq!(parse_count("1000").unwrap(), 1000);
        assert_eq!(parse_bytes("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_bytes("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_bytes("2g").unwrap(), 2_000_000_000);
        assert!(parse_count("-3M").is_err());
        assert!(parse_bytes("lots").is_err());
        assert_eq!(parse_bytes("1.1GB").unwrap(), 1_100_000_000);
        for frac in ["0.1", "0.5", "0.1B", "1.5", "0.3GiB"] {
            let e = format!("{:#}", parse_bytes(frac).unwrap_err());
            assert!(e.contains("not a whole number"), "{frac}: {e}");
        }
        assert!(parse_count("1e30").is_err());
        // The largest count is exact; one more, or one that overflows by a unit, is refused.
        assert_eq!(parse_bytes("18446744073709551615").unwrap(), u64::MAX);
        for big in ["18446744073709551616", "18446744073709551615k", "2e19"] {
            let e = format!("{:#}", parse_bytes(big).unwrap_err());
            assert!(e.contains("from 1 to 18446744073709551615"), "{e}");
        }
        let e = format!("{:#}", parse_count("x").unwrap_err());
        assert!(e.contains("'x'"), "{e}");
    }

    #[test]
    fn formats() {
        assert_eq!(count(1234), "1234");
        assert_eq!(count(1_240_000_000), "1.24B");
        assert_eq!(bytes(2_470_000_000), "2.47 GB");
        assert_eq!(bytes(999), "999 B");
    }
}
