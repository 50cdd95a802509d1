//! Parts that several strategies share, kept apart from the method files so that `strategy/`
//! lists methods: replay buffers, quadratic penalties, the Fisher information, the hooks every
//! buffer-holding strategy delegates to its buffer, the body weights selective fine-tuning
//! chooses from, and a sparse Adam.

pub mod body;
pub mod buffer;
pub mod episodic;
pub mod fisher;
pub mod fit;
pub mod penalty;
pub mod protos;
pub mod sparse_adam;
#[cfg(test)]
pub mod testutil;

/// The hooks of a strategy whose only state is the replay buffer in field `$buf`: the step's
/// batch is offered to it after the optimizer step, and it is the strategy's saved state.
/// Used inside `impl Strategy for ...`.
macro_rules! buffer_hooks {
    ($buf:ident) => {
        fn after_step(
            &mut self,
            cx: &$crate::strategy::Ctx,
            net: $crate::model::Net,
        ) -> $crate::model::Net {
            self.$buf.flush(cx.seed);
            net
        }

        fn state_bytes(&self) -> u64 {
            self.$buf.bytes()
        }

        fn state(&self) -> $crate::strategy::State {
            self.$buf.state()
        }
    };
}
pub(crate) use buffer_hooks;
