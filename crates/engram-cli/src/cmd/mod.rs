pub mod bench;
pub mod convert;
pub mod diff;
pub mod inspect;
pub mod synth;
pub mod util;
