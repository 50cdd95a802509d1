//! Hot loops compiled twice, for baseline x86-64 (SSE2) and for AVX2, the second picked at run
//! time when the CPU has it. The loops are plain Rust; only the vector width and the blends
//! change (SSE2 has no blend, so selects became branches per lane). Rust never fuses a
//! multiply and an add, so both versions give the same bits.

/// Defines `fn $name(args) -> ret` that runs `$inner(args)` (a function marked
/// `#[inline(always)]`, so that it is compiled anew inside the AVX2 wrapper) with AVX2 when the
/// CPU has it, else as compiled for the baseline. Exported for the crates above (merge
/// kernels in engram-weights); the decoders and encoders of [`crate::dtype`] use it here.
#[doc(hidden)]
#[macro_export]
macro_rules! avx2_dispatch {
    ($vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? = $inner:path;) => {
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $inner($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2, checked just above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $inner($($arg),*)
        }
    };
}

#[cfg(test)]
mod tests {
    #[inline(always)]
    fn add_all(xs: &[f32], out: &mut [f32]) {
        for (o, x) in out.iter_mut().zip(xs) {
            *o += x * 0.5;
        }
    }
    avx2_dispatch!(fn add_all_dispatched(xs: &[f32], out: &mut [f32]) = add_all;);

    /// The dispatched loop gives the baseline's bits.
    #[test]
    fn dispatch_gives_the_same_bits() {
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin() * 1e3).collect();
        let (mut a, mut b) = (vec![1.25f32; 1000], vec![1.25f32; 1000]);
        add_all(&xs, &mut a);
        add_all_dispatched(&xs, &mut b);
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}
