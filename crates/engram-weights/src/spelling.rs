//! How a front end names its options in the messages of the library's argument checks: the
//! command line's flags (`--trim-scope model`) or Python's keyword arguments
//! (`trim_scope='model'`). A check is written once, with the option's key (`trim_scope`), and
//! each front end's user reads the name they typed.

/// The way options are written by the user of a front end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spelling {
    /// Command-line flags: `--trim-scope`, `--trim-scope model`, `--seed`.
    Flags,
    /// Python keyword arguments: `trim_scope`, `trim_scope='model'`, `seed=`.
    Keywords,
}

impl Spelling {
    /// The option `key` (`trim_scope`, `lambda`, `params`) as named: `--trim-scope`,
    /// `--lambda`, `--param`; or `trim_scope`, `lambda_`, `params`.
    pub fn name(self, key: &str) -> String {
        match (self, key) {
            (Spelling::Flags, "params") => "--param".into(),
            (Spelling::Flags, k) => format!("--{}", k.replace('_', "-")),
            (Spelling::Keywords, "lambda") => "lambda_".into(),
            (Spelling::Keywords, k) => k.into(),
        }
    }

    /// The option `key` as given, in a message saying that it was: `--seed` or `seed=`.
    pub fn given(self, key: &str) -> String {
        match self {
            Spelling::Flags => self.name(key),
            Spelling::Keywords => format!("{}=", self.name(key)),
        }
    }

    /// The option `key` set to `value`: `--tau ties` or `tau='ties'`.
    pub fn set(self, key: &str, value: &str) -> String {
        match self {
            Spelling::Flags => format!("{} {value}", self.name(key)),
            Spelling::Keywords => format!("{}='{value}'", self.name(key)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Spelling::{Flags, Keywords};

    #[test]
    fn names() {
        assert_eq!(Flags.name("trim_scope"), "--trim-scope");
        assert_eq!(Flags.name("params"), "--param");
        assert_eq!(Keywords.name("lambda"), "lambda_");
        assert_eq!(Flags.given("seed"), "--seed");
        assert_eq!(Keywords.given("out_dtype"), "out_dtype=");
        assert_eq!(Flags.set("tau", "ties"), "--tau ties");
        assert_eq!(Keywords.set("trim_scope", "model"), "trim_scope='model'");
    }
}
