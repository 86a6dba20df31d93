//! Where an inference's time goes, node by node: the per-node timing tract's own command-line
//! profiler does, on the very plan a request of these inputs runs (`edgeinfer bench --profile`),
//! so that a gap to another engine can be pinned on operators rather than guessed.

use std::time::{Duration, Instant};

use tract_core::plan::eval;
use tract_core::prelude::*;

use super::Model;

/// One node of the plan and the time it took over all runs.
#[derive(Debug, Clone)]
pub struct NodeTime {
    pub name: String,
    /// The optimised operator (`OptMatMul`, `RmsNorm`, ...), as tract names it.
    pub op: String,
    pub time: Duration,
}

/// Every node's time over `runs` inferences, in plan order.
#[derive(Debug, Clone)]
pub struct Profile {
    pub runs: usize,
    pub nodes: Vec<NodeTime>,
    /// Wall time of the runs, nodes and what lies between them (tract's bookkeeping).
    pub total: Duration,
}

impl Model {
    /// Runs the plan for `inputs` `runs` times, each on a fresh state (as requests do), timing
    /// each node.
    pub fn profile(&self, inputs: TVec<TValue>, runs: usize) -> TractResult<Profile> {
        let plan = self.plans.plan_for(&inputs)?;
        let graph = plan.model();
        let mut times = vec![Duration::ZERO; graph.nodes.len()];
        let started = Instant::now();
        for _ in 0..runs {
            let mut state = plan.spawn()?;
            state.run_plan_with_eval(inputs.clone(), |session, op_state, node, input| {
                let begin = Instant::now();
                let outputs = eval(session, op_state, node, input);
                times[node.id] += begin.elapsed();
                outputs
            })?;
        }
        let total = started.elapsed();
        let nodes = graph
            .nodes
            .iter()
            .zip(times)
            .map(|(node, time)| NodeTime { name: node.name.clone(), op: node.op.name().to_string(), time })
            .collect();
        Ok(Profile { runs, nodes, total })
    }
}
