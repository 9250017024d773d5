//! The head on the built-in CPU backend: chosen hidden rows of the body's output are copied
//! into a fixed-width projection graph whose logits the host then reads (and scores) in place.
//! The projection uses unmask's int8 GEMM where the output weight's type has it.

use crate::Result;
use unmask_dream::forward::output_weight_name;
use unmask_kernels::backend::Backend;
use unmask_kernels::graph::{Graph, TensorId, TensorSource};
use unmask_kernels::GgmlType;

pub(super) struct HostHead {
    graph: Graph,
    input: TensorId,
    logits: TensorId,
    hidden_rows: Vec<f32>,
}

impl HostHead {
    /// A projection graph for up to `rows` rows of `hidden_size` floats, with the output weight
    /// of `w`.
    pub(super) fn new(
        w: &dyn TensorSource,
        hidden_size: usize,
        rows: usize,
        backend: &Backend,
    ) -> Result<Self> {
        let mut graph = Graph::new(8)?;
        let input = graph.input(GgmlType::F32, &[hidden_size as i64, rows as i64])?;
        let out_w = w.attach(&mut graph, output_weight_name(w))?;
        // A q8_0, q5_0, q4_0 or q4_K projection goes through unmask's int8 GEMM as the layers'
        // products do (for q8_0 the same integer block sums as ggml's product, 1.4-1.8x faster
        // with VNNI).
        let logits = graph.mul_mat_q8_or_ggml(out_w, input)?;
        graph.allocate(&[logits], backend)?;
        Ok(HostHead {
            graph,
            input,
            logits,
            hidden_rows: vec![0.0; hidden_size * rows],
        })
    }

    /// Bytes of compute memory the projection graph holds.
    pub(super) fn compute_bytes(&self) -> usize {
        self.graph.compute_buffer_size()
    }

    /// Projects the hidden states at `rows` of `body`'s output `hidden` (`h` floats a row), a
    /// pass of rows at a time, and hands each chunk's logits to `visit(first_index, logits)`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn logits_rows(
        &mut self,
        body: &Graph,
        hidden: TensorId,
        rows: &[usize],
        h: usize,
        n_vocab: usize,
        backend: &mut Backend,
        mut visit: impl FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<()> {
        let head = self;
        // The body's output stays in place (the body is not recomputed until the next step);
        // only the rows a chunk needs are copied into the head's input.
        let hidden = body.read_f32(hidden)?;
        let per_pass = head.hidden_rows.len() / h;
        for (chunk_index, chunk) in rows.chunks(per_pass).enumerate() {
            for (slot, &row) in chunk.iter().enumerate() {
                head.hidden_rows[slot * h..(slot + 1) * h]
                    .copy_from_slice(&hidden[row * h..(row + 1) * h]);
            }
            // Only the chunk's rows are multiplied: no padding rows in the last chunk.
            head.graph
                .set_active_rows(&[head.input, head.logits], chunk.len() as i64)?;
            head.graph
                .set_f32(head.input, &head.hidden_rows[..chunk.len() * h])?;
            head.graph.compute(backend)?;
            let logits = head.graph.read_f32(head.logits)?;
            visit(chunk_index * per_pass, &logits[..chunk.len() * n_vocab])?;
        }
        Ok(())
    }
}
