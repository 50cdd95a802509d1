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

/// The hooks of a strategy whose state is the episodic memory of GEM and A-GEM in field
/// `$mem` (`parts::episodic::Episodic`, `buffer` examples in all): `buffer` must give each task
/// one example; the memory opens a task's share at its start, sees every batch, takes the
/// task in at its end, and is the strategy's saved state (under `$name`). Used inside
/// `impl Strategy for ...`.
macro_rules! episodic_hooks {
    ($mem:ident, $name:literal) => {
        fn check(&self, s: &$crate::strategy::Setup) -> $crate::Result<()> {
            let t = s.scenario.tasks.len();
            $crate::strategy::in_range(
                $name,
                "buffer",
                self.p.buffer,
                t,
                usize::MAX,
                &format!("one example per task at least, {t} tasks"),
            )
        }

        fn before_task(
            &mut self,
            cx: &$crate::strategy::Ctx,
            net: $crate::model::Net,
        ) -> $crate::Result<$crate::model::Net> {
            self.$mem.begin(cx.seed, cx.task);
            Ok(net)
        }

        fn loss(
            &mut self,
            cx: &$crate::strategy::Ctx,
            _net: &$crate::model::Net,
            batch: &$crate::strategy::Batch,
            _logits: burn::prelude::Tensor<2>,
            loss: burn::prelude::Tensor<1>,
        ) -> burn::prelude::Tensor<1> {
            self.$mem.offer(cx, batch);
            loss
        }

        fn after_task(
            &mut self,
            _cx: &$crate::strategy::Ctx,
            net: $crate::model::Net,
        ) -> $crate::Result<$crate::model::Net> {
            self.$mem.commit();
            Ok(net)
        }

        fn state_bytes(&self) -> u64 {
            self.$mem.bytes()
        }

        fn state(&self) -> $crate::strategy::State {
            self.$mem.state()
        }

        fn load_state(&mut self, state: $crate::strategy::State) -> $crate::Result<()> {
            self.$mem.load($name, &state)
        }
    };
}
pub(crate) use episodic_hooks;
