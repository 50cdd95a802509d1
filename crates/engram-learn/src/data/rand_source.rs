//! rand_core's generator interface over engram's one RNG, so that `rand_distr` samplers
//! (Poisson for shot noise, Gamma for Dirichlet stream orders) draw from engram's keyed
//! streams.

use engram_weights::rng::Rng;

pub struct RandSource<'a>(pub &'a mut Rng);

impl rand_core::TryRng for RandSource<'_> {
    type Error = core::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok((self.0.next_u64() >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.0.next_u64())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let b = self.0.next_u64().to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        Ok(())
    }
}
