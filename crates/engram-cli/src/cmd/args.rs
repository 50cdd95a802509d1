//! The argument values that several commands take, read in one place: float dtypes
//! (`--dtype bf16`), counts (`--params 250M`), sizes (`--shard-size 2GB`), `PATH:SCALE` and
//! `NAME=VALUE`. The readers of counts and sizes are library code (`engram_bench::units`, which
//! the benchmarks use too); what is here turns a command's text into the value.
//!
//! Commands keep these arguments as text and read them at the start of `run` rather than
//! through clap's `value_parser`: a bad value is then reported like every other error
//! (`error: ...` and the reason, exit status 1), not as a usage error (exit status 2).

use anyhow::{Context, Result, bail};
use engram_ckpt::DType;
use engram_weights::merge::params::ParamValue;
use std::path::PathBuf;

pub use engram_bench::units::{parse_bytes, parse_count};

/// A float dtype by name (`f32`, `bf16`, `f8_e4m3`, ...); integer and boolean types are refused.
pub fn float_dtype(s: &str) -> Result<DType> {
    DType::parse_float(s).map_err(anyhow::Error::msg)
}

/// An optional float dtype (`--out-dtype`: absent means the input's).
pub fn opt_float_dtype(s: Option<&str>) -> Result<Option<DType>> {
    s.map(float_dtype).transpose()
}

/// An optional size in bytes (`--shard-size`: absent means one file).
pub fn opt_bytes(s: Option<&str>) -> Result<Option<u64>> {
    s.map(parse_bytes).transpose()
}

/// Why the number `text`, read as f32 `v`, is no usable finite f32: NaN or infinity
/// written as such, a value beyond f32's range (which reads as infinity), or a non-zero
/// value too small for f32 (which reads as 0). `None` when `v` is what `text` says.
fn f32_problem(text: &str, v: f32) -> Option<String> {
    let written = text.trim().to_ascii_lowercase();
    if v.is_nan() || (v.is_infinite() && written.contains("inf")) {
        return Some("must be finite".into());
    }
    if v.is_infinite() {
        return Some(format!(
            "is outside the f32 range ({:e} to {:e})",
            f32::MIN,
            f32::MAX
        ));
    }
    if v == 0.0 && text.trim().parse::<f64>().is_ok_and(|x| x != 0.0) {
        return Some(format!(
            "is too small for f32: it rounds to 0 (the smallest non-zero magnitude is {:e})",
            f32::from_bits(1)
        ));
    }
    None
}

/// A finite f32 given as `flag` (e.g. `--scale`): an error naming the flag for text that is
/// not a number, NaN or infinity, or a value outside f32's range.
pub fn finite_f32(flag: &str, text: &str) -> Result<f32> {
    let v: f32 = text
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("{flag} '{text}' is not a number"))?;
    if let Some(why) = f32_problem(text, v) {
        bail!("{flag} {text} {why}");
    }
    Ok(v)
}

/// `PATH` or `PATH:SCALE` (the suffix counts as a scale only if it parses as a number).
pub fn scaled(arg: &str, default: f32) -> Result<(PathBuf, f32)> {
    if let Some((p, s)) = arg.rsplit_once(':')
        && let Ok(v) = s.parse::<f32>()
    {
        if let Some(why) = f32_problem(s, v) {
            bail!("scale {s} in '{arg}' {why}");
        }
        return Ok((PathBuf::from(p), v));
    }
    Ok((PathBuf::from(arg), default))
}

/// `--param NAME=VALUE`, the value a number or `true`/`false` (a boolean, which only
/// switches such as `normalize` take: the merge's parameter check refuses it elsewhere).
pub fn param(p: &str) -> Result<(String, ParamValue)> {
    let (k, v) = p
        .split_once('=')
        .with_context(|| format!("--param '{p}': use NAME=VALUE"))?;
    let v = match v {
        "true" => ParamValue::Bool(true),
        "false" => ParamValue::Bool(false),
        v => ParamValue::Scalar(
            v.parse()
                .with_context(|| format!("--param '{p}': '{v}' is not a number"))?,
        ),
    };
    Ok((k.to_string(), v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtypes() {
        assert_eq!(float_dtype("bf16").unwrap(), DType::BF16);
        let e = float_dtype("i8").unwrap_err().to_string();
        assert!(e.contains("not a float type"), "{e}");
        let e = float_dtype("nope").unwrap_err().to_string();
        assert!(e.contains("unknown dtype 'nope'"), "{e}");
        assert_eq!(opt_float_dtype(None).unwrap(), None);
        assert_eq!(opt_bytes(Some("2GB")).unwrap(), Some(2_000_000_000));
    }

    #[test]
    fn scales_and_params() {
        assert_eq!(scaled("a/b:0.5", 1.0).unwrap(), (PathBuf::from("a/b"), 0.5));
        assert_eq!(scaled("c:d", 2.0).unwrap(), (PathBuf::from("c:d"), 2.0));
        assert!(scaled("x:inf", 1.0).is_err());
        // A value beyond f32 is out of range, not "not finite"; one too small rounds to 0.
        let e = scaled("x:1e300", 1.0).unwrap_err().to_string();
        assert!(
            e.contains("outside the f32 range") && e.contains("3.4028235e38"),
            "{e}"
        );
        let e = scaled("x:-1e39", 1.0).unwrap_err().to_string();
        assert!(e.contains("outside the f32 range"), "{e}");
        let e = scaled("x:1e-50", 1.0).unwrap_err().to_string();
        assert!(e.contains("too small for f32"), "{e}");
        let e = scaled("x:nan", 1.0).unwrap_err().to_string();
        assert!(e.contains("must be finite"), "{e}");
        assert_eq!(scaled("x:0", 1.0).unwrap().1, 0.0);
        let e = finite_f32("--scale", "1e300").unwrap_err().to_string();
        assert!(
            e.starts_with("--scale 1e300 is outside the f32 range"),
            "{e}"
        );
        let e = finite_f32("--scale", "inf").unwrap_err().to_string();
        assert_eq!(e, "--scale inf must be finite");
        let e = finite_f32("--scale", "abc").unwrap_err().to_string();
        assert_eq!(e, "--scale 'abc' is not a number");
        assert_eq!(finite_f32("--scale", "-2.5").unwrap(), -2.5);
        assert_eq!(
            param("normalize=true").unwrap(),
            ("normalize".to_string(), ParamValue::Bool(true))
        );
        let e = param("density").unwrap_err().to_string();
        assert_eq!(e, "--param 'density': use NAME=VALUE");
        let e = format!("{:#}", param("d=abc").unwrap_err());
        assert!(
            e.starts_with("--param 'd=abc': 'abc' is not a number"),
            "{e}"
        );
    }
}
