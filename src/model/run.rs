//! Running prepared requests: one at a time or stacked as a batch, with the session's state read
//! before and written after, and the outputs a request asked for picked out as its [`Answer`].

use std::time::Instant;

use tract_core::prelude::*;

use super::image::Frame;
use super::postprocess::Context;
use super::session::{SessionKey, SessionState, Start};
use super::{audio, AnswerError, InputError, Model, Pending, PreparedInputs, Preprocess};
use crate::protocol::OutputTensor;
use crate::stats::Timings;

/// What a request's run produced: the outputs it asked for, in its order, still tensors. The
/// side that took the request encodes them for the wire.
#[derive(Debug)]
pub struct Answer {
    pub outputs: Vec<AnsweredOutput>,
    /// The reply's own parameters (a session's id and what happened to it), if any.
    pub parameters: Option<serde_json::Map<String, serde_json::Value>>,
    /// Where the time went (the queue wait is the scheduler's to fill in).
    pub timings: Timings,
}

/// One output of an [`Answer`].
#[derive(Debug)]
pub struct AnsweredOutput {
    pub name: String,
    pub tensor: TValue,
    /// The client asked for it as raw bytes rather than JSON.
    pub binary: bool,
}

impl Answer {
    /// The outputs in the form the protocol's encoder takes.
    pub fn tensors(&self) -> Vec<OutputTensor<'_>> {
        self.outputs
            .iter()
            .map(|out| OutputTensor { name: &out.name, tensor: &out.tensor, binary: out.binary })
            .collect()
    }
}

impl Model {
    /// Runs the model once. Every call gets a fresh tract state: reusing one would carry recurrent
    /// (LSTM/GRU) hidden state from one request into the next and give wrong answers. The plan
    /// is the one fixed to the inputs' batch size when there is one (see `plans`).
    pub fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.plans.run(inputs)
    }

    /// Runs a prepared request and picks out the outputs the client asked for. A request of a
    /// session continues from the session's state and leaves the new state behind.
    pub fn answer(&self, mut prepared: PreparedInputs) -> Result<Answer, AnswerError> {
        let session_key =
            prepared.session.take().map(|id| SessionKey { owner: std::mem::take(&mut prepared.session_owner), id });
        let (mut state, start) = match (&self.session, &session_key) {
            (Some(session), Some(key)) => session.store.take(key),
            _ => (None, Start::New),
        };
        let previous = state.clone();
        let started = Instant::now();
        let mut timings = Timings::default();
        let outputs = self.complete(&mut prepared, &mut state).and_then(|()| {
            timings.preprocess = started.elapsed();
            let inputs = std::mem::take(&mut prepared.inputs);
            let outputs = self.run(inputs).map_err(|e| AnswerError::Inference(e.into()));
            timings.inference = started.elapsed() - timings.preprocess;
            outputs
        });
        let (Some(session), Some(key)) = (&self.session, session_key) else {
            return self.select(None, outputs?, &mut prepared, timings);
        };
        let outputs = match outputs {
            Ok(outputs) => outputs,
            Err(e) => {
                // The chunk was not taken: the session stays where it was.
                if let Some(previous) = previous {
                    session.store.put(key, previous);
                }
                return Err(e);
            }
        };
        let mut state = state.unwrap_or_else(|| self.fresh_state());
        state.tensors = session.state.iter().map(|(_, output, _)| (*outputs[*output]).clone()).collect();
        let session_id = key.id.clone();
        session.store.put(key, state);
        let mut parameters = serde_json::Map::new();
        parameters.insert("session".into(), session_id.into());
        if start != Start::Continued {
            parameters.insert("session_started".into(), true.into());
        }
        if let Some(why) = start.eviction() {
            parameters.insert("session_evicted".into(), why.into());
        }
        self.select(Some(parameters), outputs, &mut prepared, timings)
    }

    /// Fills in what `prepare` left for the inference thread: the pre-processed input (decoded
    /// image, framed audio) and the session state inputs. `state` is the session's, `None` for a
    /// fresh state (a new session, or a request without one).
    fn complete(&self, prepared: &mut PreparedInputs, state: &mut Option<SessionState>) -> Result<(), AnswerError> {
        if let Some(session) = &self.session {
            let state = state.get_or_insert_with(|| self.fresh_state());
            for ((input, _, _), value) in session.state.iter().zip(&state.tensors) {
                prepared.inputs[*input] = value.clone().into_tvalue();
            }
        }
        match (prepared.pending.take(), &self.preprocess) {
            (None, _) => {}
            (Some(Pending::Image(bytes)), Some(Preprocess::Image { input, target })) if self.pipeline.is_some() => {
                let frame = Frame::decode(&bytes).map_err(InputError::from)?;
                let (tensor, geometry) = target.tensor_of(&frame.rgb);
                prepared.inputs[*input] = tensor.into_tvalue();
                prepared.geometry = Some(geometry);
                prepared.frame = Some(frame);
            }
            (Some(Pending::Image(bytes)), Some(Preprocess::Image { input, target })) => {
                let (tensor, geometry) = target.tensor(&bytes).map_err(InputError::from)?;
                prepared.inputs[*input] = tensor.into_tvalue();
                prepared.geometry = Some(geometry);
            }
            (Some(Pending::Audio(samples)), Some(Preprocess::Audio { input, decl, one_frame })) => {
                let mut scratch = Vec::new();
                let context = match state {
                    Some(state) => &mut state.context,
                    None => &mut scratch,
                };
                prepared.inputs[*input] =
                    audio::frames(decl, &samples, context, *one_frame).map_err(InputError::from)?.into_tvalue();
            }
            (Some(_), _) => unreachable!("prepare only leaves pending data for the model's own preprocess kind"),
        }
        Ok(())
    }

    /// The state a new session starts from: zeros.
    fn fresh_state(&self) -> SessionState {
        let tensors = self.session.iter().flat_map(|s| s.state.iter().map(|(_, _, zero)| zero.clone())).collect();
        SessionState { tensors, context: Vec::new() }
    }

    /// Rows per run with dynamic batching: 1 when it is off.
    pub fn max_batch_size(&self) -> usize {
        self.serving.max_batch_size.unwrap_or(1)
    }

    /// Runs several prepared requests as one batch (stacked along the batch dimension, which
    /// `max_batch_size` guarantees every input and output has) and answers each with its own rows.
    /// A request whose image cannot be decoded fails alone; a failed run fails the whole batch.
    pub fn answer_batch(&self, requests: Vec<PreparedInputs>) -> Vec<Result<Answer, AnswerError>> {
        if requests.len() == 1 {
            let prepared = requests.into_iter().next().expect("one request");
            return vec![self.answer(prepared)];
        }
        let mut answers: Vec<Option<Result<Answer, AnswerError>>> = requests.iter().map(|_| None).collect();
        let mut ready = Vec::with_capacity(requests.len());
        for (slot, mut prepared) in requests.into_iter().enumerate() {
            let started = Instant::now();
            match self.complete(&mut prepared, &mut None) {
                Ok(()) => ready.push((slot, prepared, started.elapsed())),
                Err(e) => answers[slot] = Some(Err(e)),
            }
        }
        let started = Instant::now();
        let outputs = (0..self.inputs.len())
            .map(|input| {
                let parts: Vec<&Tensor> = ready.iter().map(|(_, p, _)| &*p.inputs[input]).collect();
                Ok(Tensor::stack_tensors(0, &parts)?.into_tvalue())
            })
            .collect::<TractResult<TVec<TValue>>>()
            .and_then(|stacked| self.run(stacked));
        // Every request of the batch waited for the whole run.
        let inference = started.elapsed();
        let mut start = 0;
        for (slot, prepared, preprocess) in &mut ready {
            let timings = Timings { preprocess: *preprocess, inference, ..Default::default() };
            let answer = match &outputs {
                // Each request of the batch gets the cause, so each needs its own copy of it.
                Err(e) => Err(AnswerError::Inference(format!("{e:#}").into())),
                Ok(outputs) => {
                    let range = start..start + prepared.rows();
                    start = range.end;
                    outputs
                        .iter()
                        .map(|t| Ok(t.slice(0, range.start, range.end)?.into_tvalue()))
                        .collect::<TractResult<TVec<TValue>>>()
                        .map_err(|e| AnswerError::SplitBatch(e.into()))
                        .and_then(|own| self.select(None, own, prepared, timings))
                }
            };
            answers[*slot] = Some(answer);
        }
        answers.into_iter().map(|a| a.expect("every request answered")).collect()
    }

    /// Picks out the outputs a request asked for, computing post-processed ones (or running the
    /// rest of a pipeline) when asked for.
    fn select(
        &self,
        mut parameters: Option<serde_json::Map<String, serde_json::Value>>,
        outputs: TVec<TValue>,
        prepared: &mut PreparedInputs,
        mut timings: Timings,
    ) -> Result<Answer, AnswerError> {
        let started = Instant::now();
        let frame = prepared.frame.take();
        let wanted = &prepared.outputs;
        let context = Context { geometry: prepared.geometry, thresholds: prepared.thresholds };
        let computed = match &self.postprocess {
            Some(post) if wanted.iter().any(|(i, _)| *i >= self.raw_outputs) => {
                let computed = match &self.pipeline {
                    Some(pipeline) => pipeline.read(post, &outputs, &context, frame)?,
                    None => post.compute(&outputs, &context).map_err(|e| AnswerError::Postprocess(e.into()))?,
                };
                if let Some(capped) = computed.capped {
                    parameters.get_or_insert_with(Default::default).insert("detections_capped".into(), capped);
                }
                computed.tensors
            }
            _ => Vec::new(),
        };
        let mut computed: Vec<Option<Tensor>> = computed.into_iter().map(Some).collect();
        let outputs = wanted
            .iter()
            .map(|&(index, binary)| AnsweredOutput {
                name: self.metadata.outputs[index].name.clone(),
                tensor: match index.checked_sub(self.raw_outputs) {
                    None => outputs[index].clone(),
                    // Each output is named once (`prepare` refuses duplicates).
                    Some(j) => computed[j].take().expect("computed when asked for").into_tvalue(),
                },
                binary,
            })
            .collect();
        timings.postprocess = started.elapsed();
        Ok(Answer { outputs, parameters, timings })
    }
}
